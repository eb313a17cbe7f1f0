"""``Status`` answers and the error every handler raises to produce one.

A real API server answers every failed request with a ``v1 Status`` object whose
``reason`` and ``code`` clients branch on (kubernetes-asyncio surfaces them as
``ApiException.status`` and ``.body``). :class:`ApiError` carries exactly those fields, so
a handler raises ``ApiError.not_found(...)`` wherever it finds the problem and the server
turns it into the same JSON bytes Kubernetes would send. The constructors below use the
reasons and message wording of ``k8s.io/apimachinery/pkg/api/errors``.

This module also holds the small helpers every object writer needs (timestamps, uids,
random name suffixes), so that all of them agree on formats.
"""

from __future__ import annotations

import random
import time
from typing import Any, Final

import orjson

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' utilrand alphabet
_PAIRS = tuple(a + b for a in _SUFFIX_ALPHABET for b in _SUFFIX_ALPHABET)
_SUFFIXES = 27**5


def _uid_prefix() -> str:
    """Random first twenty digits for this process's uids, with UUID 4 version and variant."""
    bits = random.getrandbits(128) & ~((0xC000 << 48) | (0xF000 << 64))
    digits = f"{bits | (0x8000 << 48) | (4 << 76):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-"


_UID_PREFIX = _uid_prefix()
_HEX3 = tuple(f"{low:03x}" for low in range(4096))


class _UidCounter:
    """The counter of :func:`new_uid` and the text of all but its last three digits,
    formatted once per 4,096 uids rather than for each."""

    __slots__ = ("head", "next")

    def __init__(self, start: int) -> None:
        self.next = start
        self.head = f"{_UID_PREFIX}{start >> 12:09x}"


_uids = _UidCounter(random.getrandbits(40))
_stamp_second = -1
_stamp_text = ""


_clock: Final = time.time
"""``time.time`` as a name of this module: compiled, a C static rather than a module
attribute looked up at every timestamp."""


def now_iso() -> str:
    """The current time as Kubernetes writes it: RFC 3339, UTC, whole seconds."""
    return iso(_clock())


def iso(epoch: float) -> str:
    """``epoch`` seconds as an RFC 3339 UTC timestamp with whole seconds.

    Every write stamps a few timestamps and they only change once a second, so the text of
    the current second is kept rather than formatted again.
    """
    global _stamp_second, _stamp_text
    second = int(epoch)
    if second != _stamp_second:
        _stamp_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        _stamp_second = second
    return _stamp_text


def new_uid() -> str:
    """A new object uid in the text form of a UUID 4, as the API server assigns.

    Uids only need to be unique: 74 random bits drawn once per process, then a counter in
    the last twelve digits — a fifth of the cost of ``uuid.uuid4()``, which a busy shard
    would call for every object and Event.
    """
    uids = _uids
    n = uids.next
    uids.next = n + 1
    low = n & 0xFFF
    if not low:
        uids.head = f"{_UID_PREFIX}{n >> 12:09x}"
    return uids.head + _HEX3[low]


def random_suffix(length: int = 5) -> str:
    """``generateName``-style suffix: lower-case consonants and digits, as Kubernetes uses.

    Five characters (every pod's) come from one draw of 24 random bits: 27⁵ is below 2²⁴,
    so a draw below it (six in seven are) is a uniform choice among all suffixes."""
    if length != 5:
        return "".join(random.choices(_SUFFIX_ALPHABET, k=length))
    while True:
        drawn = random.getrandbits(24)
        if drawn < _SUFFIXES:
            rest, last = divmod(drawn, 27)
            first, middle = divmod(rest, 729)
            return _PAIRS[first] + _PAIRS[middle] + _SUFFIX_ALPHABET[last]


def status_body(
    *,
    code: int,
    reason: str,
    message: str,
    details: dict[str, Any] | None = None,
    success: bool = False,
) -> dict[str, Any]:
    """A ``v1 Status`` object."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if success else "Failure",
    }
    if not success:
        body["message"] = message
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


class ApiError(Exception):
    """An answer other than success; the server sends :meth:`body` with :attr:`code`."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps(
            status_body(
                code=self.code, reason=self.reason, message=self.message, details=self.details
            )
        )

    # -- the errors of k8s.io/apimachinery/pkg/api/errors ---------------------------------

    @classmethod
    def not_found(cls, group: str, plural: str, name: str) -> ApiError:
        qualified = f"{plural}.{group}" if group else plural
        details = {"name": name, "kind": plural}
        if group:
            details["group"] = group
        return cls(404, "NotFound", f'{qualified} "{name}" not found', details)

    @classmethod
    def already_exists(cls, group: str, plural: str, name: str) -> ApiError:
        qualified = f"{plural}.{group}" if group else plural
        details = {"name": name, "kind": plural}
        if group:
            details["group"] = group
        return cls(409, "AlreadyExists", f'{qualified} "{name}" already exists', details)

    @classmethod
    def conflict(cls, group: str, plural: str, name: str, why: str) -> ApiError:
        qualified = f"{plural}.{group}" if group else plural
        details = {"name": name, "kind": plural}
        if group:
            details["group"] = group
        message = f'Operation cannot be fulfilled on {qualified} "{name}": {why}'
        return cls(409, "Conflict", message, details)

    @classmethod
    def invalid(cls, group: str, kind: str, name: str, causes: list[dict[str, str]]) -> ApiError:
        """``422 Invalid``; each cause is ``{"reason", "message", "field"}`` as Kubernetes."""
        qualified = f"{kind}.{group}" if group else kind
        summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
        if len(causes) > 1:
            summary = f"[{summary}]"
        details: dict[str, Any] = {"name": name, "kind": kind, "causes": causes}
        if group:
            details["group"] = group
        return cls(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def unauthorized(cls) -> ApiError:
        return cls(401, "Unauthorized", "Unauthorized")

    @classmethod
    def method_not_allowed(cls) -> ApiError:
        return cls(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    @classmethod
    def unsupported_media_type(cls, content_type: str) -> ApiError:
        return cls(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown "
            f"format - accepted media types include: application/json-patch+json, "
            f"application/merge-patch+json, application/apply-patch+yaml "
            f"(got {content_type!r})",
        )

    @classmethod
    def expired(cls, message: str) -> ApiError:
        return cls(410, "Expired", message)

    @classmethod
    def too_many_requests(cls) -> ApiError:
        return cls(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            {"retryAfterSeconds": 1},
            {"Retry-After": "1"},
        )


def field_cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    """One entry of ``details.causes`` of a ``422 Invalid``."""
    return {"reason": reason, "message": message, "field": field}
