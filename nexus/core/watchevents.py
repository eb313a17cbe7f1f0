"""Watch events read from an API server's JSON lines, parsing no more than decides.

A watch stream is one JSON line per event, ``{"type": …, "object": {…}}``, and most of a
line is its object's ``spec`` (a Job's pod template, env and arguments: some kilobytes),
which a watcher of Jobs and pods never reads. :func:`read_event` parses a whole line;
:func:`sifted_event`, given a :data:`Sift`, parses its object's ``status`` first, asks the
sift whether the event matters, and for one that does parses its ``metadata`` — the rest
of the line is not looked at. The object handed over then has no ``spec``.

It relies on the layout every API server writes (Go's JSON encoder keeps the order of a
type's fields: ``kind``, ``apiVersion``, ``metadata``, ``spec``, ``status``; a watch event
is ``{"type":"…","object":{…}}`` and nothing else), and proves it on every line rather than
trust it:

* the event's type is read from the line's first bytes (one match of a pattern, which
  also proves the object follows), and only ``ADDED``, ``MODIFIED`` and ``DELETED`` are
  sifted (``BOOKMARK``, ``ERROR`` and anything else: parsed whole);
* the status is the value after the last ``,"status":`` up to the line's last two
  ``}`` (the object's and the event's), parsed as an object of its own, where it lies:
  that parses only where the key sits right in the event's object (one level deeper or
  shallower leaves a brace over or missing, and ``"`` is escaped inside JSON strings, so
  a value cannot hold the key);
* the metadata likewise: the line up to the first ``,"spec":{`` (or up to the status)
  with the object and the event closed after it parses only where the cut is right in
  the object, and it must hold the ``metadata``.

A deletion the sift declines from its type alone (see :data:`Sift`) is not read further
than its type. A line laid out any other way is parsed whole (and sifted on its status,
once): the sift sees the same status either way, so no event it wants is ever dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

Sift = Callable[[str, dict[str, Any] | None], bool]
"""Whether a watch event matters, from its type and its object's ``status`` alone.

A ``DELETED`` event is first put to it with ``None`` for the status: from its type alone,
before anything of its object is read. It answers ``False`` only if it declines every
deletion (whatever the status); otherwise the status is read and it is asked again."""

_HEAD = re.compile(rb'\{"type":"(?:(ADDED)|(MODIFIED)|(DELETED))","object":\{')
"""The start of a line of an event to sift, as API servers write it: one match names the
type (by the group that matched) and proves the object follows, in one call."""
_KINDS = ("", "ADDED", "MODIFIED", "DELETED")  # by the number of the group that matched
_STATUS = b',"status":{'
_SPEC = b',"spec":{'
_BLANK = frozenset(b" \t\r\n")
_BRACE = ord("}")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK (ERROR never reaches a caller)
    object: dict[str, Any]


class BrokenEvent(ValueError):
    """A line that is not a watch event: not JSON (cut off mid-line), or not an event."""


def read_event(line: bytes | memoryview) -> tuple[str, dict[str, Any]] | None:
    """The type and object of a watch event's line, parsed whole; ``None`` for a blank line."""
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError as exc:  # cut off mid-line by a dropped stream
        if not bytes(line).strip():
            return None
        raise BrokenEvent(f"broken event: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BrokenEvent(f"not an event: {bytes(line[:200])!r}")
    obj = event.get("object") or {}
    return event["type"], obj if isinstance(obj, dict) else {}


def sifted_event(
    text: bytes, sift: Sift | None, start: int = 0, end: int | None = None
) -> WatchEvent | None:
    """The event of the line ``text[start:end]``, or ``None`` for a blank line or one
    ``sift`` declines; with a sift, its object's ``spec`` is left unread when the line is
    laid out as API servers write it. Nothing is copied of a line but what is parsed.

    A ``BOOKMARK`` always matters; an ``ERROR`` comes back as a ``WatchEvent`` of type
    ``ERROR`` for the caller to raise."""
    if end is None:
        end = len(text)
    if sift is not None and (head := _HEAD.match(text, start, end)) is not None:
        while end > start and text[end - 1] in _BLANK:  # a line may end in "\r"
            end -= 1
        kind = _KINDS[head.lastindex or 0]
        # (a line that does not end as an object does is read on: one cut off raises)
        if kind == "DELETED" and text[end - 1] == _BRACE and not sift(kind, None):
            return None  # every deletion declined: the object is not read at all
        # the status, where API servers write it: last in the object (see above)
        at = text.rfind(_STATUS, start, end)
        if at > start and text[end - 1] == _BRACE == text[end - 2]:
            try:  # the status alone: the ``{…}`` between its key and the last two braces
                status = orjson.loads(memoryview(text)[at + 10 : end - 2])
            except orjson.JSONDecodeError:
                pass
            else:
                if not sift(kind, status):
                    return None
                return _with_metadata(text, start, end, at, kind, status)
    read = read_event(memoryview(text)[start:end])
    if read is None:
        return None
    kind, obj = read
    if sift is not None and kind in ("ADDED", "MODIFIED", "DELETED"):
        status = obj.get("status")
        if not sift(kind, status if isinstance(status, dict) else {}):
            return None
    return WatchEvent(kind, obj)


def _with_metadata(
    text: bytes, start: int, end: int, at: int, kind: str, status: dict[str, Any]
) -> WatchEvent | None:
    """The event whose object's status (at ``at``) was read and wanted: its metadata read
    up to its spec, or, in another layout, the line read whole."""
    spec = text.find(_SPEC, start, at)
    try:
        event = orjson.loads(text[start : spec if spec >= 0 else at] + b"}}")
    except orjson.JSONDecodeError:
        event = None
    obj = event["object"] if event is not None else None
    if not isinstance(obj, dict) or "metadata" not in obj:  # laid out otherwise: read whole
        read = read_event(memoryview(text)[start:end])
        return WatchEvent(*read) if read is not None else None
    obj["status"] = status
    return WatchEvent(kind, obj)
