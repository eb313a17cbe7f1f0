"""Field selectors of one term, as a watch applies them to every change."""

from __future__ import annotations

from typing import Any

from nexus_dev.cluster.selectors import field_value, selector_predicate


def event(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"name": "e", "namespace": "ns"}, **fields}


def test_one_top_level_field_matches_as_its_text_whatever_it_holds() -> None:
    equal = selector_predicate(None, "reason=FailedCreate", "events")
    unequal = selector_predicate(None, "reason!=FailedCreate", "events")
    assert equal is not None and unequal is not None
    for obj, matches in (
        (event(reason="FailedCreate"), True),
        (event(reason="SuccessfulCreate"), False),
        (event(), False),  # absent: ""
        (event(reason=None), False),
        (event(reason=["FailedCreate"]), False),
    ):
        assert equal(obj) is matches, obj
        assert unequal(obj) is not matches, obj
        assert (field_value(obj, "reason") == "FailedCreate") is matches
    empty = selector_predicate(None, "reason=", "events")
    assert empty is not None and empty(event()) and empty(event(reason=None))
    assert not empty(event(reason="x"))
    typed = selector_predicate(None, "type=true", "events")  # a non-text value, as its text
    assert typed is not None and typed(event(type=True)) and not typed(event(type=False))


def test_source_means_the_source_component() -> None:
    predicate = selector_predicate(None, "source=kubelet", "events")
    assert predicate is not None
    assert predicate(event(source={"component": "kubelet", "host": "n"}))
    assert not predicate(event(source="kubelet"))
