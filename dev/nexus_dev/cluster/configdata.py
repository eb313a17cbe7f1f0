"""Secrets and ConfigMaps: what the API server checks and fills in when they are written.

Nexus copies the Secrets and ConfigMaps that templates reference to every shard, so the
emulator must treat them as a real server does, or the copies would only work here:

* a Secret's ``stringData`` is merged into ``data`` (base64-encoded, winning over a key of
  the same name) and never stored; ``type`` defaults to ``Opaque``; a ``data`` value that
  is not base64 is refused with ``400``, as the server's decoder refuses it;
* keys of ``data`` (and a ConfigMap's ``binaryData``) must be valid config keys, and a
  ConfigMap key may not be in both (``422 Invalid``);
* on update, a Secret's ``type`` cannot change, and an object marked ``immutable: true``
  keeps its data and its mark for ever (``422``: delete and create it again instead).

Neither kind has a ``spec`` or a ``generation``.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from nexus_dev.cluster.statuses import ApiError, field_cause
from nexus_dev.cluster.store import Obj

KINDS = {"secrets": "Secret", "configmaps": "ConfigMap"}
"""The plurals this module handles, and their kinds."""

_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")
_KEY_MESSAGE = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
    "'[-._a-zA-Z0-9]+')"
)
_IMMUTABLE = "field is immutable when `immutable` is set"


def prepare(plural: str, obj: Obj, old: Obj | None = None) -> None:
    """Check ``obj`` (a create when ``old`` is ``None``, else an update of ``old``) and
    fill in what the server adds, in place; ``ApiError`` when the server would refuse it."""
    kind = KINDS[plural]
    name = obj["metadata"].get("name") or ""
    if plural == "secrets":
        _merge_string_data(obj, kind)
        obj.setdefault("type", "Opaque")
    causes = []
    for section in ("data", "binaryData") if plural == "configmaps" else ("data",):
        values = obj.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ApiError.bad_request(
                f'{kind} in version "v1" cannot be handled as a {kind}: {section} must be an object'
            )
        for key, value in values.items():
            if not _KEY.match(key):
                message = f'Invalid value: "{key}": {_KEY_MESSAGE}'
                causes.append(field_cause(f"{section}[{key}]", message))
            if section == "data" and plural == "configmaps":
                if not isinstance(value, str):
                    raise ApiError.bad_request(
                        f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                        f"data[{key}] must be a string"
                    )
            else:
                _check_base64(kind, section, key, value)
    if plural == "configmaps":
        both = set(obj.get("data") or {}) & set(obj.get("binaryData") or {})
        for key in sorted(both):
            message = f'Invalid value: "{key}": duplicate of key present in binaryData'
            causes.append(field_cause(f"data[{key}]", message))
    if old is not None:
        causes += _update_causes(plural, obj, old)
    if causes:
        raise ApiError.invalid("", kind, name, causes)


def _merge_string_data(obj: Obj, kind: str) -> None:
    strings = obj.pop("stringData", None)
    if not strings:
        return
    if not isinstance(strings, dict) or not all(isinstance(v, str) for v in strings.values()):
        raise ApiError.bad_request(
            f'{kind} in version "v1" cannot be handled as a {kind}: stringData must map '
            "keys to strings"
        )
    data = dict(obj.get("data") or {})
    for key, value in strings.items():
        data[key] = base64.b64encode(value.encode()).decode()
    obj["data"] = data


def _check_base64(kind: str, section: str, key: str, value: Any) -> None:
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ApiError.bad_request(
            f'{kind} in version "v1" cannot be handled as a {kind}: {section}[{key}]: '
            f"illegal base64 data ({exc})"
        ) from None


def _update_causes(plural: str, obj: Obj, old: Obj) -> list[dict[str, str]]:
    causes = []
    if plural == "secrets" and obj.get("type") != old.get("type"):
        causes.append(
            field_cause("type", f'Invalid value: "{obj.get("type")}": field is immutable')
        )
    if old.get("immutable"):
        forbidden = f"Forbidden: {_IMMUTABLE}"
        if not obj.get("immutable"):
            causes.append(field_cause("immutable", forbidden, "FieldValueForbidden"))
        for section in ("data", "binaryData"):
            if (obj.get(section) or {}) != (old.get(section) or {}):
                causes.append(field_cause(section, forbidden, "FieldValueForbidden"))
    return causes
