"""What the API server checks and fills in when a Job (or any object) is created.

Nexus must learn here, not in production, that a spec is one a real cluster refuses, so
:func:`validate_job` reproduces the checks of ``pkg/apis/batch/validation`` that a
scheduler can get wrong: names (DNS-1123 subdomain, at most 63 characters for a Job since
its name becomes a label value), containers with a name and an image, a restart policy of
``Never`` or ``OnFailure``, non-negative counts, a pod failure policy only with ``Never``,
and resource quantities that parse. Every problem becomes one ``details.causes`` entry of
a ``422 Invalid`` with the field path and the wording Kubernetes uses.

:func:`default_job` then adds what the server adds: the generated selector and the
``controller-uid``/``job-name`` labels on the pod template, and the defaulted fields
(``backoffLimit: 6``, ``completions``/``parallelism: 1``, ...), so that objects read back
look like a real cluster's.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from nexus_dev.cluster.statuses import ApiError, field_cause

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_MULTIPLIERS: dict[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}

SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
    "[a-z0-9])?)*')"
)
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
JOB_RESTART_POLICIES = ("OnFailure", "Never")
FAILURE_POLICY_ACTIONS = ("FailJob", "FailIndex", "Ignore", "Count")
MAX_EXIT_CODE_VALUES = 255


def parse_quantity(text: object) -> Decimal:
    """The value of a Kubernetes quantity (``256Mi`` → 268435456; ``null`` reads as zero, as
    the API server reads it); ``ValueError`` if bad, as for a value of JSON that is no
    quantity at all (a list, an object, true)."""
    if text is None:
        return Decimal(0)
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"not a quantity: {text!r}")
    return _parse_quantity(text)


@functools.lru_cache(maxsize=1024)  # a few distinct quantities, in every Job of a template
def _parse_quantity(text: str | int | float) -> Decimal:
    if isinstance(text, int | float):
        return Decimal(text)
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation as exc:
        raise ValueError(f"not a quantity: {text!r}") from exc
    if suffix[:1] in ("e", "E"):
        return value * (Decimal(10) ** int(suffix[1:]))
    return value * _MULTIPLIERS[suffix]


def memory_bytes(text: str | int | float) -> int:
    """A memory quantity in whole bytes (rounded up, as the kubelet does)."""
    value = parse_quantity(text)
    whole = int(value)
    return whole + 1 if value > whole else whole


def check_name(name: Any, field: str, *, max_length: int = 253) -> list[dict[str, str]]:
    """Causes for an invalid object name (DNS-1123 subdomain of at most ``max_length``)."""
    if not name:
        return [
            field_cause(
                field, "Required value: name or generateName is required", "FieldValueRequired"
            )
        ]
    if not isinstance(name, str):
        return [field_cause(field, f"Invalid value: {name!r}: must be a string")]
    causes = []
    if len(name) > max_length:
        causes.append(
            field_cause(
                field, f'Invalid value: "{name}": must be no more than {max_length} characters'
            )
        )
    if not _DNS_SUBDOMAIN.match(name):
        causes.append(field_cause(field, f'Invalid value: "{name}": {SUBDOMAIN_MESSAGE}'))
    return causes


def _required(field: str) -> dict[str, str]:
    return field_cause(field, "Required value", "FieldValueRequired")


def _non_negative(spec: dict[str, Any], key: str, causes: list[dict[str, str]]) -> None:
    value = spec.get(key)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        causes.append(
            field_cause(
                f"spec.{key}", f"Invalid value: {value}: must be greater than or equal to 0"
            )
        )


def validate_pod_spec(spec: Any, path: str, causes: list[dict[str, str]]) -> None:
    """Append the causes a real server would give for the pod spec at ``path``."""
    if not isinstance(spec, dict):
        causes.append(_required(path))
        return
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        causes.append(_required(f"{path}.containers"))
        return
    seen: set[str] = set()
    for i, container in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(container, dict):
            causes.append(_required(where))
            continue
        name = container.get("name")
        if not name:
            causes.append(_required(f"{where}.name"))
        elif not isinstance(name, str) or len(name) > 63 or not _DNS_LABEL.match(name):
            causes.append(field_cause(f"{where}.name", f'Invalid value: "{name}": {LABEL_MESSAGE}'))
        elif name in seen:
            causes.append(
                field_cause(f"{where}.name", f'Duplicate value: "{name}"', "FieldValueDuplicate")
            )
        else:
            seen.add(name)
        if not container.get("image"):
            causes.append(_required(f"{where}.image"))
        envs = container.get("env") or []
        for env in envs:  # the common case, every entry named, checked without counting
            if type(env) is not dict or not env.get("name"):
                for j, entry in enumerate(envs):
                    if not isinstance(entry, dict) or not entry.get("name"):
                        causes.append(_required(f"{where}.env[{j}].name"))
                break
        causes.extend(_resource_causes(container.get("resources") or {}, f"{where}.resources"))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        causes.append(
            field_cause(
                f"{path}.terminationGracePeriodSeconds",
                f"Invalid value: {grace}: must be greater than or equal to 0",
            )
        )


_RESOURCES_JUDGED: dict[tuple[Any, ...], list[dict[str, str]]] = {}
"""Causes found in resources already judged, by where they are and what they say: the
Jobs of one template all carry the same few limits and requests."""


def _resource_causes(resources: dict[str, Any], where: str) -> list[dict[str, str]]:
    """What the API server refuses in a container's resources: bad quantities, names that
    are neither a container's standard resource nor fully qualified, extended resources
    in parts of a unit, or a request above its limit (an extended one must equal it).
    Judged once per distinct resources (and place), then found again."""
    limits, requests = resources.get("limits"), resources.get("requests")
    try:
        key: tuple[Any, ...] | None = (where, _typed(limits), _typed(requests))
        known = _RESOURCES_JUDGED.get(key)  # type: ignore[arg-type]
    except TypeError:  # a value that cannot be a key (a list, a dict): judged afresh
        key, known = None, None
    if known is not None:
        return list(known)
    causes = _judge_resources(resources, where)
    if key is not None:
        if len(_RESOURCES_JUDGED) >= 1024:
            _RESOURCES_JUDGED.clear()
        _RESOURCES_JUDGED[key] = list(causes)
    return causes


def _typed(section: Any) -> Any:
    """A section of resources as a key that tells ``true`` from ``1`` (equal in Python, and
    hashed alike, but a quantity only the second is)."""
    if isinstance(section, dict):
        return tuple([(name, type(value), value) for name, value in section.items()])
    return section


def _judge_resources(resources: dict[str, Any], where: str) -> list[dict[str, str]]:
    causes = []
    parsed: dict[str, dict[str, Decimal]] = {}
    for section in ("limits", "requests"):
        parsed[section] = {}
        for resource, quantity in (resources.get(section) or {}).items():
            try:
                value = parse_quantity(quantity)
            except ValueError:
                causes.append(
                    field_cause(
                        f"{where}.{section}[{resource}]",
                        f'Invalid value: "{quantity}": quantities must match the regular '
                        "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    )
                )
                continue
            if resource in _STANDARD_RESOURCES or _standard_resource(resource):
                parsed[section][resource] = value
            elif "/" not in resource or resource.split("/")[0].endswith("kubernetes.io"):
                causes.append(
                    field_cause(
                        f"{where}.{section}[{resource}]",
                        f'Invalid value: "{resource}": must be a standard resource for containers',
                    )
                )
            elif value != int(value):
                causes.append(
                    field_cause(
                        f"{where}.{section}[{resource}]",
                        f'Invalid value: "{quantity}": must be an integer',
                    )
                )
            else:
                parsed[section][resource] = value
    for resource, request in parsed["requests"].items():
        limit = parsed["limits"].get(resource)
        if limit is None:
            continue
        if not _standard_resource(resource) and request != limit:
            causes.append(
                field_cause(
                    f"{where}.requests[{resource}]",
                    f'Invalid value: "{resources["requests"][resource]}": must be equal to'
                    f" {resource} limit of {resources['limits'][resource]}",
                )
            )
        elif request > limit:
            causes.append(
                field_cause(
                    f"{where}.requests[{resource}]",
                    f'Invalid value: "{resources["requests"][resource]}": must be less than or'
                    f" equal to {resource} limit of {resources['limits'][resource]}",
                )
            )
    return causes


_STANDARD_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})


def _standard_resource(name: str) -> bool:
    return name in _STANDARD_RESOURCES or name.startswith("hugepages-")


def validate_job(job: dict[str, Any]) -> None:
    """Raise ``422 Invalid`` with every cause a real API server would report for ``job``."""
    metadata = job.get("metadata") or {}
    name = metadata.get("name") or ""
    causes = check_name(name, "metadata.name", max_length=63) if name else []
    spec = job.get("spec")
    if not isinstance(spec, dict):
        causes.append(_required("spec"))
        raise ApiError.invalid("batch", "Job", name, causes)
    template = spec.get("template")
    if not isinstance(template, dict):
        causes.append(_required("spec.template"))
        raise ApiError.invalid("batch", "Job", name, causes)
    pod_spec = template.get("spec")
    validate_pod_spec(pod_spec, "spec.template.spec", causes)
    restart = (pod_spec or {}).get("restartPolicy", "Always") if isinstance(pod_spec, dict) else ""
    if restart not in JOB_RESTART_POLICIES:
        causes.append(
            field_cause(
                "spec.template.spec.restartPolicy",
                f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
                "FieldValueNotSupported",
            )
        )
    for key in ("backoffLimit", "completions", "parallelism", "ttlSecondsAfterFinished"):
        _non_negative(spec, key, causes)
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        causes.append(
            field_cause(
                "spec.activeDeadlineSeconds", f"Invalid value: {deadline}: must be greater than 0"
            )
        )
    policy = spec.get("podFailurePolicy")
    if policy is not None:
        _validate_failure_policy(policy, restart, causes)
    if causes:
        raise ApiError.invalid("batch", "Job", name, causes)


def _validate_failure_policy(policy: Any, restart: str, causes: list[dict[str, str]]) -> None:
    path = "spec.podFailurePolicy"
    if restart != "Never":
        causes.append(
            field_cause(
                "spec.template.spec.restartPolicy",
                f'Invalid value: "{restart}": only "Never" is supported when podFailurePolicy is '
                "specified",
            )
        )
    rules = policy.get("rules") if isinstance(policy, dict) else None
    if not isinstance(rules, list):
        causes.append(_required(f"{path}.rules"))
        return
    for i, rule in enumerate(rules):
        where = f"{path}.rules[{i}]"
        action = rule.get("action") if isinstance(rule, dict) else None
        if action not in FAILURE_POLICY_ACTIONS:
            supported = ", ".join(f'"{a}"' for a in FAILURE_POLICY_ACTIONS)
            causes.append(
                field_cause(
                    f"{where}.action",
                    f'Unsupported value: "{action}": supported values: {supported}',
                    "FieldValueNotSupported",
                )
            )
        if not isinstance(rule, dict):
            continue
        codes = rule.get("onExitCodes")
        conditions = rule.get("onPodConditions")
        if codes is None and not conditions:
            causes.append(
                field_cause(
                    where,
                    "Invalid value: specifying one of onExitCodes and onPodConditions is required",
                )
            )
        if codes is not None:
            operator = codes.get("operator")
            values = codes.get("values") or []
            if operator not in ("In", "NotIn"):
                causes.append(
                    field_cause(
                        f"{where}.onExitCodes.operator",
                        f'Unsupported value: "{operator}": supported values: "In", "NotIn"',
                        "FieldValueNotSupported",
                    )
                )
            if not values:
                causes.append(_required(f"{where}.onExitCodes.values"))
            elif len(values) > MAX_EXIT_CODE_VALUES:
                causes.append(
                    field_cause(
                        f"{where}.onExitCodes.values",
                        f"Too many: {len(values)}: must have at most {MAX_EXIT_CODE_VALUES} items",
                        "FieldValueTooMany",
                    )
                )
            seen: set[Any] = set()
            for j, value in enumerate(values):
                if value in seen:
                    causes.append(
                        field_cause(
                            f"{where}.onExitCodes.values[{j}]",
                            f"Duplicate value: {value}",
                            "FieldValueDuplicate",
                        )
                    )
                seen.add(value)
            if any(values[j - 1] > values[j] for j in range(1, len(values))):
                causes.append(
                    field_cause(
                        f"{where}.onExitCodes.values",
                        f"Invalid value: {values}: must be ordered",
                    )
                )


def default_job(job: dict[str, Any], uid: str) -> None:
    """Fill in, in place, what the API server defaults on a freshly created Job."""
    name = job["metadata"]["name"]
    # dicts (validate_job saw to it): typed so, compiled, without method calls
    spec: dict[str, Any] = job["spec"]
    template: dict[str, Any] = spec["template"]
    template_meta = template.setdefault("metadata", {})
    generated = {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    if not spec.get("manualSelector"):
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **generated}
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    if not job["metadata"].get("labels"):
        job["metadata"]["labels"] = dict(template_meta.get("labels") or {})
    spec.setdefault("parallelism", 1)
    spec.setdefault("completions", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", None)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    if spec["manualSelector"] is None:
        del spec["manualSelector"]
    default_pod_spec(template["spec"])


def default_pod_spec(spec: dict[str, Any]) -> None:
    """Fill in, in place, the pod spec defaults a real server adds."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    containers: list[dict[str, Any]] = spec.get("containers") or []
    for container in containers:
        image = str(container.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")
        container.setdefault("imagePullPolicy", "IfNotPresent" if tagged else "Always")
        container.setdefault("resources", {})
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
