"""The whole v1.2 ``customConfiguration`` of a request, and what each field does to its Job.

:func:`normalise` reads the request's object as existing v1.2 clients send it (every field
present, ``null`` for unset, in camelCase or PascalCase; see
:mod:`nexus.core.compatibility`), validates every field, and returns the overrides stored
with the checkpoint; :func:`apply` folds them into the run's applied configuration. The
container and placement fields (image, limits, workgroup, deadline, retries, custom
resources) are :mod:`nexus.core.templates`'; the others are here:

* ``env`` — ``[{name, value, valueType}]`` → the container's environment, over the
  template's. ``valueType`` ``PLAIN`` (or unset) is the value as given;
  ``RELATIVE_REFERENCE`` is a path relative to the template's mounted configuration
  (``runtimeEnvironment.configuration``), resolved to the absolute path in the container,
  and refused when the template mounts none. The variables of the algorithm contract
  (:data:`nexus.core.labels.CONTRACT_ENV`) cannot be set.
* ``args`` — the same entries → ``--name=value`` arguments after the template's;
  ``sas-uri`` and ``request-id`` are the contract's.
* ``secrets`` — Secret names → ``envFrom`` of each, **only** those the template's
  ``runtimeEnvironment.allowedSecrets`` lists; another is refused with 403 naming it
  (:class:`ForbiddenConfiguration`).
* ``image``/``registry`` (:mod:`nexus.core.templates`) — **only** an image the template's
  ``container.allowedImages`` lists (or its own): another is refused with 403 naming it
  (:func:`nexus.core.templatechecks.check_image`), as the pod runs with the template's
  service account and Secrets.
* ``speculativeAttempts`` — N from 0 to :data:`MAX_SPECULATIVE_ATTEMPTS`: N copies of the
  run start at once; the first to report decides it, and the others are deleted. 0 and 1
  are one copy.
* ``additionalWorkgroups`` and ``monitoringParameters`` — refused when not empty (a 400
  that says why): a run is placed on exactly one workgroup, and Nexus' metrics are not
  configured per run. Empty, like ``null``, is absent.

Guarantees: every refusal names the field as the request gave it, with the index of the
entry (``customConfiguration.env[2].valueType``); nothing is stored on refusal (the
submitter validates before it writes).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from nexus.core.compatibility import FieldNames, GivenTwice, canonical
from nexus.core.labels import CONTRACT_ENV
from nexus.core.templatechecks import check_image
from nexus.core.templates import (
    OVERRIDE_ALIASES,
    OVERRIDES,
    AppliedConfiguration,
    ConfigurationEntry,
    ConfigurationOverrides,
    InvalidConfiguration,
    Template,
    Workgroup,
    normalise_overrides,
)
from nexus.core.templates import apply as apply_template

MAX_ENTRIES = 100
"""``env`` and ``args`` entries, and ``secrets``, a request may give (each becomes part of
the Job object, which the API server keeps under 1.5 MiB)."""
MAX_VALUE = 32 * 1024
"""The longest ``env`` or ``args`` value, in characters."""
MAX_SPECULATIVE_ATTEMPTS = 5
"""Copies of one run at most: each is a Job created against the shard's creation rate."""

V12_ONLY = ("env", "args", "secrets", "speculativeAttempts")
UNSUPPORTED = {
    "additionalWorkgroups": "a run is placed on exactly one workgroup; choose it with"
    " customConfiguration.workgroup",
    "monitoringParameters": "Nexus does not configure monitoring per run; every run's"
    " metrics are at GET /metrics",
}
FIELDS = FieldNames((*OVERRIDES, *OVERRIDE_ALIASES, *V12_ONLY, *UNSUPPORTED))
"""Every field of a v1.2 ``customConfiguration``, as found in any letter case."""
ENTRY_FIELDS = FieldNames(("name", "value", "valueType"))
VALUE_TYPES = {"PLAIN": "PLAIN", "RELATIVE_REFERENCE": "RELATIVE_REFERENCE"}
RESERVED_ARGS = frozenset({"sas-uri", "request-id"})

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]{0,252}\Z")
_ARG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_SECRET = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


class ForbiddenConfiguration(InvalidConfiguration):
    """An override the template does not allow this request to make (answered 403)."""


def normalise(raw: Any) -> ConfigurationOverrides:
    """Validated overrides from a request's ``customConfiguration``; ``{}`` when it is
    absent, ``null`` or holds nothing but ``null`` and empty collections."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidConfiguration("customConfiguration", "expected an object")
    try:
        given = canonical(raw, FIELDS, "customConfiguration")
    except GivenTwice as exc:
        raise InvalidConfiguration("customConfiguration", str(exc).split(": ", 1)[1]) from None
    own = {}
    rest = {}
    for name, value in given.items():
        if name in V12_ONLY:
            own[name] = value
        elif name in UNSUPPORTED:
            if value not in ({}, []):
                raise InvalidConfiguration(
                    f"customConfiguration.{name}", f"not supported: {UNSUPPORTED[name]}"
                )
        elif name in OVERRIDES or name in OVERRIDE_ALIASES:
            rest[name] = value
        else:
            allowed = ", ".join(FIELDS)
            raise InvalidConfiguration(
                f"customConfiguration.{name}", f"unknown field (allowed: {allowed})"
            )
    result = normalise_overrides(rest) if rest else ConfigurationOverrides()
    if "env" in own:
        result["env"] = _entries("env", own["env"])
        _no_duplicates(result["env"])
    if "args" in own:
        result["args"] = _entries("args", own["args"])
    if "secrets" in own:
        result["secrets"] = _secrets(own["secrets"])
    if "speculativeAttempts" in own:
        result["speculativeAttempts"] = _attempts(own["speculativeAttempts"])
    for name in ("env", "args", "secrets"):  # empty is absent: not stored
        if name in result and not result[name]:  # type: ignore[literal-required]
            del result[name]  # type: ignore[misc]
    return result


_PLAIN: dict[int, tuple[Template, Workgroup | None, AppliedConfiguration]] = {}
"""The applied configuration of runs without overrides, by template: ``(template, its
workgroup, applied)`` as they were when it was made."""
_MAX_PLAIN = 1024


def apply(
    template: Template, overrides: ConfigurationOverrides, workgroups: Mapping[str, Workgroup]
) -> AppliedConfiguration:
    """The applied configuration of a run: :func:`nexus.core.templates.apply`, then the
    fields of this module; :class:`ForbiddenConfiguration` for a Secret or an image the
    template does not allow.

    Runs without overrides share one applied configuration per template and workgroup
    (both are replaced, never changed, when their resources change): the caller reads
    it and must not change it. Building it is a tenth of a submission's CPU, and the
    store sends a shared one once for a whole batch of runs."""
    if overrides:
        return _apply(template, overrides, workgroups)
    workgroup = workgroups.get(template.workgroup)
    made = _PLAIN.get(id(template))
    if made is not None and made[0] is template and made[1] is workgroup:
        return made[2]
    applied = _apply(template, overrides, workgroups)
    if len(_PLAIN) >= _MAX_PLAIN:  # templates replaced many times: start again
        _PLAIN.clear()
    _PLAIN[id(template)] = (template, workgroup, applied)
    return applied


def _apply(
    template: Template, overrides: ConfigurationOverrides, workgroups: Mapping[str, Workgroup]
) -> AppliedConfiguration:
    applied = apply_template(template, overrides, workgroups)
    if "image" in overrides or "registry" in overrides:  # run with the template's rights
        not_allowed = check_image(template, applied)
        if not_allowed is not None:
            field = "image" if "image" in overrides else "registry"
            raise ForbiddenConfiguration(f"customConfiguration.{field}", not_allowed)
    mount = template.configuration
    if mount is not None:
        applied["configuration"] = {**mount}
    if overrides.keys().isdisjoint(V12_ONLY):
        return applied  # the common case: nothing more to do
    for i, entry in enumerate(overrides.get("env", ())):
        applied["env"][entry["name"]] = _resolved(template, "env", i, entry)
    extra = [
        f"--{entry['name']}={_resolved(template, 'args', i, entry)}"
        for i, entry in enumerate(overrides.get("args", ()))
    ]
    if extra:
        applied["extraArgs"] = extra
    secrets = overrides.get("secrets", ())
    refused = [name for name in secrets if name not in template.allowed_secrets]
    if refused:
        allowed = ", ".join(sorted(template.allowed_secrets)) or "none"
        raise ForbiddenConfiguration(
            f"customConfiguration.secrets[{secrets.index(refused[0])}]",
            f"Secret {refused[0]!r} is not one template {template.name!r} allows"
            f" (runtimeEnvironment.allowedSecrets: {allowed})",
        )
    applied["envFrom"].extend({"secretRef": {"name": name}} for name in secrets)
    attempts = overrides.get("speculativeAttempts", 1)
    if attempts > 1:
        applied["speculativeAttempts"] = attempts
    return applied


def _resolved(template: Template, field: str, index: int, entry: ConfigurationEntry) -> str:
    if entry["valueType"] == "PLAIN":
        return entry["value"]
    if template.configuration is None:
        raise InvalidConfiguration(
            f"customConfiguration.{field}[{index}].valueType",
            f"RELATIVE_REFERENCE is a path in the template's mounted configuration, and"
            f" template {template.name!r} mounts none (runtimeEnvironment.configuration)",
        )
    return posixpath.join(template.configuration["mountPath"], entry["value"])


def _entries(field: str, value: Any) -> list[ConfigurationEntry]:
    where = f"customConfiguration.{field}"
    if not isinstance(value, list):
        raise InvalidConfiguration(where, "expected a list of {name, value, valueType}")
    if len(value) > MAX_ENTRIES:
        raise InvalidConfiguration(where, f"at most {MAX_ENTRIES} entries")
    return [_entry(field, f"{where}[{i}]", item) for i, item in enumerate(value)]


def _entry(field: str, where: str, item: Any) -> ConfigurationEntry:
    if not isinstance(item, dict):
        raise InvalidConfiguration(where, "expected an object {name, value, valueType}")
    try:
        item = canonical(item, ENTRY_FIELDS, where)
    except GivenTwice as exc:
        raise InvalidConfiguration(where, str(exc).split(": ", 1)[1]) from None
    unknown = [] if item.keys() <= ENTRY_FIELDS.names else sorted(set(item) - ENTRY_FIELDS.names)
    if unknown:
        raise InvalidConfiguration(
            f"{where}.{unknown[0]}", "unknown field (allowed: name, value, valueType)"
        )
    name = item.get("name")
    if field == "env":
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InvalidConfiguration(f"{where}.name", "expected an environment variable name")
        if name in CONTRACT_ENV:
            raise InvalidConfiguration(f"{where}.name", f"{name} is set by Nexus for every run")
    else:
        if not isinstance(name, str) or not _ARG_NAME.match(name):
            raise InvalidConfiguration(
                f"{where}.name", "expected an argument name such as max-iterations"
            )
        if name in RESERVED_ARGS:
            raise InvalidConfiguration(f"{where}.name", f"--{name} is set by Nexus for every run")
    value = item.get("value", "")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidConfiguration(f"{where}.value", "expected a string")
    value = str(value)
    if len(value) > MAX_VALUE or "\x00" in value:
        raise InvalidConfiguration(
            f"{where}.value", f"expected at most {MAX_VALUE} characters, without NUL"
        )
    kind = item.get("valueType", "PLAIN")
    value_type = VALUE_TYPES.get(kind.upper()) if isinstance(kind, str) else None
    if value_type is None:
        raise InvalidConfiguration(
            f"{where}.valueType", f"expected PLAIN or RELATIVE_REFERENCE, not {kind!r}"
        )
    if value_type == "RELATIVE_REFERENCE":
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts or "" in parts:
            raise InvalidConfiguration(
                f"{where}.value",
                "a RELATIVE_REFERENCE is a relative path such as models/config.json, without '..'",
            )
        return {"name": name, "value": value, "valueType": "RELATIVE_REFERENCE"}
    return {"name": name, "value": value, "valueType": "PLAIN"}


def _no_duplicates(entries: list[ConfigurationEntry]) -> None:
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry["name"] in seen:
            raise InvalidConfiguration(
                f"customConfiguration.env[{i}].name", f"{entry['name']!r} is given twice"
            )
        seen.add(entry["name"])


def _secrets(value: Any) -> list[str]:
    where = "customConfiguration.secrets"
    if not isinstance(value, list):
        raise InvalidConfiguration(where, "expected a list of Secret names")
    if len(value) > MAX_ENTRIES:
        raise InvalidConfiguration(where, f"at most {MAX_ENTRIES} entries")
    names: list[str] = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or len(name) > 253 or not _SECRET.match(name):
            raise InvalidConfiguration(f"{where}[{i}]", "expected the name of a Secret")
        if name not in names:
            names.append(name)
    return names


def _attempts(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= MAX_SPECULATIVE_ATTEMPTS
    ):
        raise InvalidConfiguration(
            "customConfiguration.speculativeAttempts",
            f"expected an integer from 0 to {MAX_SPECULATIVE_ATTEMPTS} (copies of the run;"
            " 0 and 1 are one)",
        )
    return max(value, 1)
