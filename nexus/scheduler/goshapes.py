"""The Go Nexus v1 wire shapes (docs/go-v1-api.md), translated to and from Nexus' own.

Clients built for the Go Nexus send a run request whose ``customConfiguration`` is a whole
``NexusAlgorithmSpec`` (the template's spec: ``container``, ``computeResources``,
``workgroupRef``, ``runtimeEnvironment``…), and read checkpoints with snake_case field
names and results whose absent values are empty strings. This module turns the one into
the request Nexus' submitter takes, and Nexus' checkpoints into the others.

Guarantees:

* **A value takes effect or is refused.** Each field of ``customConfiguration`` either maps
  onto a Nexus override (and then goes through the same validation as a v1.2 request:
  ``runtimeEnvironment.environmentVariables`` are v1.2's ``env``, the Secrets of
  ``mappedEnvironmentVariables`` its ``secrets``, allowed only as the template allows) or,
  when set, is refused with a 400 naming it (``customConfiguration.runtimeEnvironment.
  annotations``) and saying why. The Go scheduler ignored such fields without a word.
* **Go's zero values are absent.** ``null``, ``""``, ``[]`` and ``{}`` mean "not given", as
  a Go client that marshals its structs sends them.
* **Every string field of an answer is a string.** Go's structs always carry them, empty
  when there is nothing; its generated client fails on a ``null`` there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NotRequired, TypedDict

from nexus.core.httpapi import bad_request, json_type
from nexus.core.overrides import normalise
from nexus.core.runs import TERMINAL, Checkpoint, ParentRef, RunResult, Stage
from nexus.core.templates import (
    AppliedConfiguration,
    ConfigurationOverrides,
    InvalidConfiguration,
    normalise_overrides,
)

WORKGROUP_GROUP = "science.sneaksanddata.com"
WORKGROUP_KIND = "NexusAlgorithmWorkgroup"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
"""How Go writes a time that was never set (``sent_at`` of a run not yet sent)."""

_MAPPED: dict[tuple[str, str], str] = {
    ("container", "image"): "image",
    ("container", "registry"): "registry",
    ("container", "versionTag"): "versionTag",
    ("computeResources", "cpuLimit"): "cpuLimit",
    ("computeResources", "memoryLimit"): "memoryLimit",
    ("computeResources", "customResources"): "customResources",
    ("workgroupRef", "name"): "workgroup",
    ("runtimeEnvironment", "deadlineSeconds"): "deadlineSeconds",
    ("runtimeEnvironment", "maximumRetries"): "maximumRetries",
}
"""``customConfiguration.<part>.<field>`` → the Nexus override it sets."""

_TEMPLATE_ONLY: dict[tuple[str, str], str] = {
    ("container", "serviceAccountName"): "the service account is the template's",
    ("computeResources", "defaultResourceQuota"): "requests equal limits in Nexus",
    ("computeResources", "requests"): "requests equal limits in Nexus",
    ("computeResources", "limits"): "use computeResources.cpuLimit and memoryLimit",
    ("runtimeEnvironment", "configurationFileMounts"): "mounts are the template's",
    ("runtimeEnvironment", "secretFileMounts"): "mounts are the template's",
    ("runtimeEnvironment", "storageMounts"): "mounts are the template's",
    ("runtimeEnvironment", "annotations"): "annotations are the template's",
    ("payloadConfiguration", "payloadSerialization"): "the template decides where inputs go",
}
"""Fields a run may not set, and why (the Go scheduler dropped them silently)."""

_WHOLE_TEMPLATE_ONLY = {
    "command": "the command is the template's",
    "args": "arguments are the template's",
    "errorHandlingBehaviour": "exit-code handling is the template's",
    "datadogIntegrationSettings": "not supported by Nexus",
}
_PARTS = {"container", "computeResources", "workgroupRef", "runtimeEnvironment"}
_PARTS_KNOWN = _PARTS | {"payloadConfiguration"} | set(_WHOLE_TEMPLATE_ONLY)


class GoRequestResult(TypedDict):
    """``GET /algorithm/v1/results/{algorithm}/requests/{id}``: how a run stands."""

    requestId: str
    status: str
    resultUri: str
    """A fresh URL of the result when ``COMPLETED``, else ``""``."""
    runErrorMessage: str
    """The failure's cause when the run failed, else ``""``."""


class GoTaggedResult(GoRequestResult):
    """One run of ``GET /algorithm/v1/results/tags/{tag}``."""

    algorithmName: str


class GoParent(TypedDict):
    requestId: str
    algorithmName: str


class GoCheckpoint(TypedDict):
    """``GET /algorithm/v1/metadata/…``: the checkpoint under the Go field names."""

    algorithm: str
    id: str
    lifecycle_stage: str
    payload_uri: str
    result_uri: str
    algorithm_failure_cause: str
    algorithm_failure_details: str
    received_by_host: str
    received_at: str
    sent_at: str
    applied_configuration: dict[str, Any]
    configuration_overrides: NotRequired[dict[str, Any]]
    content_hash: str
    last_modified: str
    tag: NotRequired[str]
    api_version: str
    job_uid: NotRequired[str]
    parent: NotRequired[GoParent]
    payload_valid_for: str


def _given(value: Any) -> bool:
    return value not in (None, "", [], {})


def run_body(body: dict[str, Any]) -> dict[str, Any]:
    """The v1.2 run request a Go v1 request ``body`` stands for; 400 naming the field
    (under its Go name) for what is wrong or cannot take effect."""
    version = body.get("requestApiVersion")
    if version is not None and not isinstance(version, str):
        raise bad_request(f"requestApiVersion: expected a string, got {json_type(version)}")
    translated: dict[str, Any] = {
        "algorithmParameters": body.get("algorithmParameters"),
        "tag": body.get("tag") or None,  # Go writes no tag as ""
        "parentRequest": body.get("parentRequest") or None,
        "payloadValidFor": body.get("payloadValidFor") or None,
    }
    if "algorithmParameters" not in body:
        del translated["algorithmParameters"]
    overrides, valid_for = _overrides(body.get("customConfiguration"))
    if overrides:
        translated["customConfiguration"] = overrides
    if translated["payloadValidFor"] is None:
        translated["payloadValidFor"] = valid_for
    return translated


def _overrides(raw: Any) -> tuple[dict[str, Any], Any]:
    """(Nexus overrides, ``payloadConfiguration.payloadValidFor``) of a Go
    ``customConfiguration``, each value checked as the v1.2 route checks it."""
    if raw is None:
        return {}, None
    if not isinstance(raw, dict):
        raise bad_request(
            f"customConfiguration: expected an object (a NexusAlgorithmSpec), got {json_type(raw)}",
            "invalid_configuration",
        )
    overrides: dict[str, Any] = {}
    valid_for = None
    for part, value in raw.items():
        where = f"customConfiguration.{part}"
        if part not in _PARTS_KNOWN:
            allowed = ", ".join(sorted(_PARTS_KNOWN))
            raise _refused(where, f"unknown field (a NexusAlgorithmSpec has {allowed})")
        if not _given(value):
            continue
        if part in _WHOLE_TEMPLATE_ONLY:
            raise _refused(where, f"cannot be set per run: {_WHOLE_TEMPLATE_ONLY[part]}")
        if not isinstance(value, dict):
            raise _refused(where, f"expected an object, got {json_type(value)}")
        for name, given in value.items():
            at = f"{where}.{name}"
            if part == "payloadConfiguration" and name == "payloadValidFor":
                valid_for = given if _given(given) else None
            elif part == "runtimeEnvironment" and name == "environmentVariables":
                if _given(given):
                    overrides["env"] = _environment(at, given)
            elif part == "runtimeEnvironment" and name == "mappedEnvironmentVariables":
                if _given(given):
                    overrides["secrets"] = _secrets(at, given)
            elif (part, name) in _MAPPED:
                if _given(given):
                    overrides[_MAPPED[part, name]] = _checked(at, _MAPPED[part, name], given)
            elif (part, name) in _TEMPLATE_ONLY:
                if _given(given):
                    raise _refused(at, f"cannot be set per run: {_TEMPLATE_ONLY[part, name]}")
            elif part == "workgroupRef" and name in ("group", "kind"):
                expected = WORKGROUP_GROUP if name == "group" else WORKGROUP_KIND
                if _given(given) and given != expected:
                    raise _refused(at, f"expected {expected!r}, the only kind of workgroup")
            else:
                raise _refused(at, "unknown field")
    return overrides, valid_for


def _environment(where: str, value: Any) -> list[dict[str, Any]]:
    """Go ``EnvVar``s (``{name, value}``) as v1.2 ``env`` entries, checked as v1.2's."""
    if not isinstance(value, list):
        raise _refused(where, f"expected a list of {{name, value}}, got {json_type(value)}")
    entries = []
    for i, variable in enumerate(value):
        if not isinstance(variable, dict):
            raise _refused(f"{where}[{i}]", f"expected {{name, value}}, got {json_type(variable)}")
        unknown = set(variable) - {"name", "value", "valueFrom"}
        if unknown:
            raise _refused(f"{where}[{i}].{min(unknown)}", "unknown field")
        if _given(variable.get("valueFrom")):
            raise _refused(
                f"{where}[{i}].valueFrom",
                "values from Secrets and ConfigMaps are the template's; give a value",
            )
        entries.append(
            {
                "name": variable.get("name"),
                "value": variable.get("value") or "",
                "valueType": "PLAIN",
            }
        )
    checked: list[dict[str, Any]] = _as_v12(where, "env", entries)
    return checked


def _secrets(where: str, value: Any) -> list[str]:
    """Go ``EnvFromSource``s naming Secrets (``{secretRef: {name}}``) as v1.2 ``secrets``."""
    if not isinstance(value, list):
        raise _refused(where, f"expected a list of {{secretRef}}, got {json_type(value)}")
    names = []
    for i, source in enumerate(value):
        if not isinstance(source, dict):
            raise _refused(f"{where}[{i}]", f"expected {{secretRef}}, got {json_type(source)}")
        for other in sorted(set(source) - {"secretRef"}):
            if _given(source[other]):
                raise _refused(
                    f"{where}[{i}].{other}",
                    "only whole Secrets (secretRef) may be added per run",
                )
        secret = source.get("secretRef")
        name = secret.get("name") if isinstance(secret, dict) else None
        if not _given(name):
            raise _refused(f"{where}[{i}].secretRef.name", "expected the name of a Secret")
        names.append(name)
    checked: list[str] = _as_v12(where, "secrets", names)
    return checked


def _as_v12(where: str, name: str, value: Any) -> Any:
    """``value`` as v1.2's override ``name``, errors renamed to where the Go body has it."""
    try:
        normalised = normalise({name: value})
    except InvalidConfiguration as exc:
        field = exc.field.replace(f"customConfiguration.{name}", where, 1)
        raise _refused(field, exc.message) from exc
    return normalised.get(name, [])


def _checked(where: str, name: str, value: Any) -> Any:
    """``value`` as the override ``name``, validated by the same rules as v1.2's."""
    try:
        normalised = normalise_overrides({name: value})
    except InvalidConfiguration as exc:
        raise _refused(where, exc.message) from exc
    return normalised.get(name, value)


def _refused(where: str, message: str) -> Exception:
    return bad_request(f"{where}: {message}", "invalid_configuration")


# -- answers -------------------------------------------------------------------------------


def error_message(run: Checkpoint | RunResult) -> str:
    """Go's ``runErrorMessage``: the failure's cause, only for a run that did not complete."""
    if run.stage not in TERMINAL or run.stage == Stage.COMPLETED:
        return ""
    return run.failure_cause or run.stage.value.lower().replace("_", " ")


def go_time(moment: datetime | None) -> str:
    """A time in RFC 3339, in UTC with microseconds always written (the zero time for
    none): fixed width, so that two compare as strings as they do as times (the Go SDK
    picks a tag's most recent run by comparing ``received_at`` strings)."""
    if moment is None:
        return GO_ZERO_TIME
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def go_duration(span: timedelta) -> str:
    """A duration as Go's ``time.Duration`` prints it: ``24h0m0s``, ``1m30s``."""
    seconds = int(span.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def applied_spec(config: AppliedConfiguration) -> dict[str, Any]:
    """A run's applied configuration as the ``NexusAlgorithmSpec`` Go clients read."""
    container: dict[str, Any] = {
        "image": config.get("image", ""),
        "registry": config.get("registry", ""),
        "versionTag": config.get("versionTag", ""),
    }
    if config.get("serviceAccountName"):
        container["serviceAccountName"] = config["serviceAccountName"]
    resources: dict[str, Any] = {
        "cpuLimit": config.get("cpuLimit", ""),
        "memoryLimit": config.get("memoryLimit", ""),
    }
    if config.get("customResources"):
        resources["customResources"] = config["customResources"]
    environment: dict[str, Any] = {
        "deadlineSeconds": config.get("deadlineSeconds"),
        "maximumRetries": config.get("maximumRetries"),
    }
    if config.get("env"):
        environment["environmentVariables"] = [
            {"name": k, "value": v} for k, v in config["env"].items()
        ]
    if config.get("envFrom"):
        environment["mappedEnvironmentVariables"] = config["envFrom"]
    if config.get("annotations"):
        environment["annotations"] = config["annotations"]
    spec: dict[str, Any] = {
        "container": container,
        "computeResources": resources,
        "workgroupRef": _workgroup_ref(config.get("workgroup", "")),
        "command": " ".join(config.get("command") or []),
        "runtimeEnvironment": environment,
    }
    if config.get("args"):
        spec["args"] = config["args"]
    if config.get("transientExitCodes") or config.get("fatalExitCodes"):
        spec["errorHandlingBehaviour"] = {
            "transientExitCodes": config.get("transientExitCodes") or [],
            "fatalExitCodes": config.get("fatalExitCodes") or [],
        }
    return spec


def overrides_spec(overrides: ConfigurationOverrides) -> dict[str, Any]:
    """A run's stored overrides as the partial ``NexusAlgorithmSpec`` a Go client sent."""
    spec: dict[str, dict[str, Any]] = {}
    for (part, name), nexus in _MAPPED.items():
        if nexus in overrides:
            value = overrides[nexus]  # type: ignore[literal-required]
            spec.setdefault(part, {})[name] = value
    if "workgroupRef" in spec:
        spec["workgroupRef"] = _workgroup_ref(spec["workgroupRef"]["name"])
    environment = spec.get("runtimeEnvironment", {})
    if overrides.get("env"):
        environment["environmentVariables"] = [
            {"name": e["name"], "value": e["value"]} for e in overrides["env"]
        ]
    if overrides.get("secrets"):
        environment["mappedEnvironmentVariables"] = [
            {"secretRef": {"name": name}} for name in overrides["secrets"]
        ]
    if environment:
        spec["runtimeEnvironment"] = environment
    return spec


def _workgroup_ref(name: str) -> dict[str, str]:
    return {"name": name, "group": WORKGROUP_GROUP, "kind": WORKGROUP_KIND}


def parent_ref(parent: ParentRef | None) -> GoParent | None:
    if parent is None:
        return None
    return {"requestId": parent["requestId"], "algorithmName": parent["algorithmName"]}
