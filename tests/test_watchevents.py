"""Watch events read for their status first: the sift sees the very status a whole parse
finds, and what is handed over is the event's metadata and status, however a line is laid
out (:mod:`nexus.core.watchevents`)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from nexus.core.watchevents import BrokenEvent, WatchEvent, sifted_event

META = {
    "name": "r-1",
    "uid": "u-1",
    "resourceVersion": "7",
    "labels": {"a": "b"},
    "annotations": {"note": 'text with ,"status":{"phase":"Failed"} and ,"spec":{ in it'},
}
STATUS = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
SPEC = {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{}]}}}


def event(obj: dict[str, Any], kind: str = "MODIFIED") -> dict[str, Any]:
    return {"type": kind, "object": obj}


OBJECTS = {
    "as API servers write it": {"kind": "Job", "metadata": META, "spec": SPEC, "status": STATUS},
    "no status": {"kind": "Job", "metadata": META, "spec": SPEC},
    "empty status": {"kind": "Job", "metadata": META, "spec": SPEC, "status": {}},
    "no spec": {"kind": "Job", "metadata": META, "status": STATUS},
    "a key named spec in the metadata": {
        "metadata": {**META, "annotations": {"spec": "x"}, "labels": {"q": "1", "spec": "y"}},
        "spec": SPEC,
        "status": STATUS,
    },
    "a status object in the spec": {
        "metadata": META,
        "spec": {"status": {"phase": "Failed"}, "x": {"status": {"phase": "Failed"}}},
        "status": STATUS,
    },
    "a status object in the status": {
        "metadata": META,
        "spec": SPEC,
        "status": {"phase": "Running", "inner": {"status": {"phase": "Failed"}}},
    },
    "a member after the status": {
        "metadata": META,
        "spec": SPEC,
        "status": STATUS,
        "extra": {"status": {"phase": "Failed"}},
    },
    "spec after the status": {"metadata": META, "status": STATUS, "spec": SPEC},
    "metadata last": {"spec": SPEC, "status": STATUS, "metadata": META},
    "a status that is not an object": {"metadata": META, "spec": SPEC, "status": "odd"},
}


def layouts(obj: dict[str, Any], kind: str = "MODIFIED") -> dict[str, bytes]:
    whole = event(obj, kind)
    compact = orjson.dumps(whole)
    return {
        "compact": compact,
        "with a carriage return": compact + b"\r",
        "spaced": json.dumps(whole).encode(),
        "indented": json.dumps(whole, indent=1).encode(),
        "object first": orjson.dumps({"object": obj, "type": kind}),
    }


@pytest.mark.parametrize("case", OBJECTS)
def test_the_sift_sees_the_status_a_whole_parse_finds(case: str) -> None:
    obj = OBJECTS[case]
    status = obj.get("status")
    expected = status if isinstance(status, dict) else {}
    for layout, line in layouts(obj).items():
        seen: list[tuple[str, dict[str, Any]]] = []

        def sift(kind: str, status: dict[str, Any], seen: Any = seen) -> bool:
            seen.append((kind, status))
            return True

        got = sifted_event(line, sift)
        assert seen == [("MODIFIED", expected)], (case, layout)
        assert got is not None
        assert got.type == "MODIFIED"
        assert got.object["metadata"] == obj["metadata"], (case, layout)
        assert got.object.get("status") == obj.get("status"), (case, layout)
        # the spec is left out or kept whole, never half read
        assert got.object.get("spec", obj.get("spec")) == obj.get("spec"), (case, layout)
        assert sifted_event(line, lambda *_: False) is None, (case, layout)


def test_the_spec_is_left_unread_when_the_line_is_laid_out_as_api_servers_write_it() -> None:
    line = orjson.dumps(event(OBJECTS["as API servers write it"]))
    got = sifted_event(line, lambda *_: True)
    assert got == WatchEvent("MODIFIED", {"kind": "Job", "metadata": META, "status": STATUS})
    broken_spec = line.replace(b'"containers":[{}]', b'"containers":[{')  # never looked at
    assert sifted_event(broken_spec, lambda *_: True) == got
    assert sifted_event(broken_spec, lambda *_: False) is None


def test_a_line_is_read_where_it_lies_in_a_chunk() -> None:
    first = orjson.dumps(event(OBJECTS["as API servers write it"], "ADDED"))
    second = orjson.dumps(event(OBJECTS["no spec"], "DELETED"))
    chunk = first + b"\n" + second + b"\n"
    start = len(first) + 1
    got = sifted_event(chunk, lambda *_: True, start, len(chunk) - 1)
    assert got == WatchEvent("DELETED", OBJECTS["no spec"])
    assert sifted_event(chunk, None, 0, len(first)) == WatchEvent(
        "ADDED", OBJECTS["as API servers write it"]
    )  # without a sift: whole


def test_bookmarks_errors_and_blank_lines() -> None:
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}
    got = sifted_event(orjson.dumps(bookmark), lambda *_: False)
    assert got == WatchEvent("BOOKMARK", bookmark["object"])
    error = {"type": "ERROR", "object": {"code": 410, "message": "too old"}}
    assert sifted_event(orjson.dumps(error), lambda *_: False) == WatchEvent(
        "ERROR", error["object"]
    )
    assert sifted_event(b" \r", lambda *_: True) is None
    with pytest.raises(BrokenEvent, match="broken event"):
        sifted_event(b'{"type":"MODIFIED","object":{"metadata":{"name":"a"},"status":{', None)
    with pytest.raises(BrokenEvent, match="not an event"):
        sifted_event(b'{"kind":"Status"}', lambda *_: True)


def test_a_deletion_is_put_to_the_sift_by_its_type_first() -> None:
    """A sift that declines every deletion has none read; one that wants some is asked
    again with the status, and gets the event as any other."""
    obj = OBJECTS["as API servers write it"]
    line = orjson.dumps(event(obj, "DELETED"))
    asked: list[tuple[str, dict[str, Any] | None]] = []

    def sift(kind: str, status: dict[str, Any] | None) -> bool:
        asked.append((kind, status))
        return status is None or status.get("phase") == "Running"

    got = sifted_event(line, sift)
    assert asked == [("DELETED", None), ("DELETED", STATUS)]
    assert got == WatchEvent("DELETED", {"kind": "Job", "metadata": META, "status": STATUS})
    # declined from its type: not a byte of its object is parsed (this one is no JSON)
    unread = b'{"type":"DELETED","object":{"metadata":{"name":"a"},"status":{"phase" [}}'
    assert sifted_event(unread, lambda kind, status: kind != "DELETED") is None
    with pytest.raises(BrokenEvent):  # as any other deletion a sift may want is
        sifted_event(unread, lambda *_: True)
    # other types are not asked by their type alone
    asked.clear()
    assert sifted_event(orjson.dumps(event(obj, "MODIFIED")), sift) is not None
    assert asked == [("MODIFIED", STATUS)]
