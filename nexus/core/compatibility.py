"""What existing v1.2 clients and algorithm containers send and read (DESIGN §2, §3).

The published v1.2 clients do not send the bodies the API describes, but their own
serialisations of them:

* the Python client sends **every** optional field, absent ones as ``null``, down to each
  ``customConfiguration`` field and each ``env`` entry's ``valueType``;
* the .NET client sends its property names as they are spelt in C#: **PascalCase**
  (``AlgorithmParameters``, ``CustomConfiguration.DeadlineSeconds``, ``Env[].ValueType``),
  also with ``null`` for what is unset, and reads answers case-insensitively;
* both parse ``status`` into a closed enumeration and fail on a value they do not know.

So, before any field is looked at, :func:`canonical` turns an object into what the rest of
the code reads: a ``null`` is an absent field (and therefore never an unknown one), and a
known field spelt in another letter case is the field. A key that is no known field in any
casing stays as it was given, so that the unknown-field rule after it names it as sent.

Guarantees:

* **Nothing is changed that was already canonical.** An object whose keys are all known
  names spelt right and that holds no ``null`` is returned as it is (no copy): the hot
  submit path pays one dictionary walk.
* **No silent choice.** The same field given twice (``tag`` and ``Tag``, both not null) is
  refused with the two spellings named.
* **Statuses a v1.2 client can parse.** :func:`v12_status` answers only the v1.2
  vocabulary: ``SCHEDULING_FAILED`` is ``SCHEDULING_TIMEOUT`` there, its cause kept in
  ``runErrorMessage`` (:func:`v12_error_message`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # the run model imports the templates, which import this module
    from nexus.core.runs import Stage

__all__ = [
    "V12_STATUSES",
    "FieldNames",
    "GivenTwice",
    "canonical",
    "v12_error_message",
    "v12_status",
]


class GivenTwice(ValueError):
    """A field given under two spellings, both with a value."""

    def __init__(self, where: str, first: str, second: str) -> None:
        at = f"{where}." if where else ""
        super().__init__(
            f"{at}{second}: the same field as {at}{first}; give it once (null counts as absent)"
        )


class FieldNames:
    """The canonical names of an object's fields, found from any letter case."""

    __slots__ = ("_by_folded", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names: frozenset[str] = frozenset(names)
        self._by_folded: dict[str, str] = {name.casefold(): name for name in self.names}

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Any:
        return iter(sorted(self.names))

    def get(self, given: str) -> str | None:
        """The canonical name of ``given`` in any letter case, or ``None``."""
        if given in self.names:
            return given
        return self._by_folded.get(given.casefold())


def canonical(obj: dict[str, Any], names: FieldNames, where: str = "") -> dict[str, Any]:
    """``obj`` with its ``null`` fields dropped and its known fields under their canonical
    names (see the module docstring); :class:`GivenTwice` when one is given twice.
    ``where`` is the object's place in the body, for the message."""
    if obj.keys() <= names.names and None not in obj.values():
        return obj  # the common case, checked in C: already canonical
    present = {key: value for key, value in obj.items() if value is not None}
    if present.keys() <= names.names:
        return present  # as the Python client sends it: nulls, names spelt right
    result: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in present.items():
        name = names.get(key) if isinstance(key, str) else None
        if name is None:
            name = key  # unknown in any casing: kept as given, for the unknown-field rule
        elif name in spelt:
            raise GivenTwice(where, spelt[name], key)
        spelt[name] = key
        result[name] = value
    return result


V12_STATUSES: Final = (
    "NEW",
    "BUFFERED",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "SCHEDULING_TIMEOUT",
    "DEADLINE_EXCEEDED",
    "THROTTLED",
    "CANCELLED",
)
"""Every status a v1.2 client knows (DESIGN §2); a v1.2 route answers no other."""

_V12_RENAMED: Final = {"SCHEDULING_FAILED": "SCHEDULING_TIMEOUT"}
_UNFINISHED: Final = frozenset({"NEW", "BUFFERED", "RUNNING"})


def v12_status(stage: Stage) -> str:
    """The status a v1.2 route answers for a run in ``stage``."""
    value: str = stage.value
    return _V12_RENAMED.get(value, value)


def v12_error_message(
    stage: Stage, failure_cause: str | None, failure_details: str | None
) -> str | None:
    """``runErrorMessage`` of a run: its cause and details when it ended other than
    ``COMPLETED`` (so a ``SCHEDULING_TIMEOUT`` says why it could not be scheduled: a
    ``FailedCreate``, an image that cannot be pulled, a refused Job…), else ``None``."""
    if stage.value in _UNFINISHED or stage.value == "COMPLETED":
        return None
    parts = [p for p in (failure_cause, failure_details) if p]
    return ": ".join(parts) if parts else stage.value.lower().replace("_", " ")
