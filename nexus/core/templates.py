"""Algorithm templates and workgroups, and the configuration a run is given.

``NexusAlgorithmTemplate`` and ``NexusAlgorithmWorkgroup`` custom resources (DESIGN §5) are
parsed here into frozen dataclasses (the scheduler keeps the current ones in its catalog,
filled from a watch). When a run is accepted, its template, the request's
``customConfiguration`` overrides and the workgroup are folded into one flat *applied
configuration*, stored with the checkpoint: the run is dispatched as it was accepted, even
if the template changes in between. Only the workgroup's placement (tolerations, affinity)
is read when the Job is made, so an edit reaches runs still queued; a run whose workgroup is
gone by then gets no Job (see the dispatcher).

A template's ``securityContext`` (``pod`` and ``container``) is laid over
:func:`restricted_security_context`, key by key, so that an algorithm's pod passes the Pod
Security "restricted" profile unless its template says otherwise. Only a template that
differs from those defaults puts its security contexts into the applied configuration;
the Job of a run without them gets the defaults.

Overrides are validated field by field; an error names the field (``customConfiguration.
cpuLimit``) and what was expected. Older clients' names (``imageRepository``, ``imageTag``,
``version``) are accepted as aliases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from nexus.core.config import parse_duration
from nexus.core.retrying import PolicyError, RetryPolicy, for_run, parse_policy
from nexus.core.sigv4 import MAX_PRESIGN_SECONDS

# Patterns end in \Z, not $ ($ also matches before a final newline) and spell digits
# [0-9] (\d also matches non-ASCII digits): a value that passes must be usable as is.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A Kubernetes object name that is also safe as a path segment and a label value."""

_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)\Z")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?\Z")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?\Z")
_IMAGE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*\Z")
_RESOURCE = re.compile(r"^([a-z0-9.-]+/)?[a-zA-Z0-9._-]+\Z")
_WHOLE = re.compile(r"^[0-9]+\Z")

DEFAULT_DEADLINE_SECONDS = 3600
"""A run's deadline when its template sets none (and when a stored configuration lacks one)."""
MAX_DEADLINE_SECONDS = 7 * 24 * 3600
MAX_RETRIES = 100
MAX_EXIT_CODE = 255
DEFAULT_PAYLOAD_VALID_FOR = 24 * 3600.0
MIN_PAYLOAD_VALID_FOR, MAX_PAYLOAD_VALID_FOR = 60.0, float(MAX_PRESIGN_SECONDS)
"""How long a run's input links may be valid: a minute to S3's longest presign, 7 days."""
DEFAULT_INLINE_LIMIT = 64 * 1024


def restricted_security_context() -> dict[str, dict[str, Any]]:
    """What an algorithm's pod (``pod``) and container (``container``) get unless its
    template says otherwise: what the Pod Security "restricted" profile asks for, fresh
    each call. An image whose user is a name rather than a number needs ``runAsUser`` in
    the template; ``readOnlyRootFilesystem`` is not part of the profile and is left to
    templates, since algorithms commonly write scratch files."""
    return {
        "pod": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "container": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


_RESTRICTED = restricted_security_context()  # compared with, never handed out
_POD_SECURITY = frozenset(
    {
        "appArmorProfile", "fsGroup", "fsGroupChangePolicy", "runAsGroup", "runAsNonRoot",
        "runAsUser", "seLinuxChangePolicy", "seLinuxOptions", "seccompProfile",
        "supplementalGroups", "supplementalGroupsPolicy", "sysctls", "windowsOptions",
    }
)  # fmt: skip
_CONTAINER_SECURITY = frozenset(
    {
        "allowPrivilegeEscalation", "appArmorProfile", "capabilities", "privileged",
        "procMount", "readOnlyRootFilesystem", "runAsGroup", "runAsNonRoot", "runAsUser",
        "seLinuxOptions", "seccompProfile", "windowsOptions",
    }
)  # fmt: skip


class ConfigurationEntry(TypedDict):
    """One ``env`` or ``args`` entry of a ``customConfiguration``: a value as given
    (``PLAIN``) or a path relative to the template's mounted configuration."""

    name: str
    value: str
    valueType: Literal["PLAIN", "RELATIVE_REFERENCE"]


class ConfigurationMount(TypedDict):
    """A template's mounted configuration (``runtimeEnvironment.configuration``): the
    ConfigMap mounted read-only at ``mountPath`` in every run's container."""

    configMap: str
    mountPath: str


class ConfigurationOverrides(TypedDict, total=False):
    """A request's ``customConfiguration``, validated and under the current names (older
    names are folded in); stored with the checkpoint as ``configuration_overrides``.
    The fields after ``customResources`` are read by :mod:`nexus.core.overrides`."""

    image: str
    registry: str
    versionTag: str
    cpuLimit: str
    memoryLimit: str
    workgroup: str
    deadlineSeconds: int
    maximumRetries: int
    customResources: dict[str, str]
    env: list[ConfigurationEntry]
    args: list[ConfigurationEntry]
    secrets: list[str]
    speculativeAttempts: int


class AppliedConfiguration(TypedDict):
    """The configuration a run was accepted with (:func:`apply`), stored with its
    checkpoint as jsonb (``applied_configuration``) and read back as the plain dict it is.

    This is what :func:`apply` writes. A row written by hand or by a test may lack keys:
    the Job is built inside the dispatcher's guard (such a run is refused, not crashed on),
    and the other readers take what they need with ``.get()`` and a default.
    """

    image: str
    registry: str
    versionTag: str
    serviceAccountName: str | None
    cpuLimit: str
    memoryLimit: str
    customResources: dict[str, str]
    workgroup: str
    shard: str
    """The shard of the workgroup when the run was accepted: where it is dispatched."""
    command: list[str]
    args: list[str]
    env: dict[str, str]
    envFrom: list[dict[str, Any]]
    annotations: dict[str, str]
    deadlineSeconds: int
    maximumRetries: int
    transientExitCodes: list[int]
    fatalExitCodes: list[int]
    retryPolicy: NotRequired[RetryPolicy]
    """The template's retry policy by failure class (:mod:`nexus.core.retrying`), only
    when it retries anything."""
    securityContext: NotRequired[dict[str, dict[str, Any]]]
    """The pod's and the container's security context, only when the template's differs
    from :func:`restricted_security_context` (which a run without it gets)."""
    extraArgs: NotRequired[list[str]]
    """Arguments after the template's (``customConfiguration.args``)."""
    configuration: NotRequired[ConfigurationMount]
    """The template's mounted configuration, when it has one."""
    speculativeAttempts: NotRequired[int]
    """Copies of the run started at once, when more than one: the first report wins."""


class InvalidConfiguration(ValueError):
    """A template or an override is not valid; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Workgroup:
    name: str
    shard: str
    description: str = ""
    capabilities: dict[str, Any] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    affinity: dict[str, Any] = field(default_factory=dict)
    max_running: int | None = None
    """``spec.concurrency.maxRunning``: runs of this workgroup RUNNING at once, at most."""


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    image: str
    registry: str
    version_tag: str
    service_account: str | None
    cpu_limit: str
    memory_limit: str
    custom_resources: dict[str, str]
    workgroup: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    env_from: list[dict[str, Any]]
    annotations: dict[str, str]
    deadline_seconds: int
    maximum_retries: int
    transient_exit_codes: list[int]
    fatal_exit_codes: list[int]
    payload_valid_for: float
    inline_payloads: bool
    inline_limit: int
    security_context: dict[str, dict[str, Any]] = field(default_factory=restricted_security_context)
    """``pod`` and ``container`` security contexts, the restricted defaults included."""
    max_running: int | None = None
    """``spec.concurrency.maxRunning``: runs of this algorithm RUNNING at once, at most."""
    configuration: ConfigurationMount | None = None
    """``runtimeEnvironment.configuration``: a ConfigMap mounted in every run's container,
    which ``RELATIVE_REFERENCE`` values of a request's env and args resolve against."""
    allowed_secrets: frozenset[str] = frozenset()
    """``runtimeEnvironment.allowedSecrets``: the Secrets a request may name in
    ``customConfiguration.secrets`` (none unless listed)."""
    allowed_images: tuple[str, ...] = ()
    """``container.allowedImages``: images (``registry/repository``, or a prefix ending in
    ``/*``) a request may run instead of the template's own (see
    :mod:`nexus.core.templatechecks`)."""
    retry_policy: RetryPolicy = field(default_factory=dict)
    """``spec.retryPolicy``, normalised: the failure classes retried, and how."""


def _get(obj: dict[str, Any], path: str, default: Any = None) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _json_copy(value: Any, where: str) -> Any:
    """A copy of a JSON value that shares no dict or list with it, at any depth.

    A round trip through orjson: the applied configuration is stored as JSON with orjson
    anyway, so this accepts exactly what can be stored, and for a typical ``envFrom`` it is
    faster than a recursive copy in Python and about 6x as fast as ``copy.deepcopy``.
    """
    try:
        return orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise InvalidConfiguration(where, f"expected JSON values ({exc})") from None


def _env(raw: Any) -> dict[str, str]:
    """Template env as a mapping, from a ``[{name, value}]`` list or a plain mapping."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return {
            str(e["name"]): str(e.get("value", ""))
            for e in raw
            if isinstance(e, dict) and "name" in e
        }
    return {}


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidConfiguration(where, "expected an object")
    return value


def _whole(value: Any, where: str, default: int) -> int:
    """A whole number from a custom resource field (YAML may give ``"30"``)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidConfiguration(where, "expected a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidConfiguration(where, f"expected a whole number, not {value!r}") from None
    if number < 0 or (isinstance(value, float) and value != number):
        raise InvalidConfiguration(where, f"expected a whole number >= 0, not {value!r}")
    return number


def _strings(value: Any, where: str) -> list[str]:
    """A list of strings (a lone string would otherwise be split into characters)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise InvalidConfiguration(where, "expected a list of strings")
    return [str(v) for v in value]


def _codes(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidConfiguration(where, "expected a list of exit codes")
    codes = [_whole(code, f"{where}[{i}]", 0) for i, code in enumerate(value)]
    for i, code in enumerate(codes):
        if code > MAX_EXIT_CODE:
            raise InvalidConfiguration(f"{where}[{i}]", f"an exit code is 0 to {MAX_EXIT_CODE}")
    return codes


def _security_context(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """The template's ``securityContext`` laid over the restricted defaults, key by key."""
    given = _mapping(value, where)
    unknown = set(given) - {"pod", "container"}
    if unknown:
        raise InvalidConfiguration(
            f"{where}.{min(unknown)}", "unknown field (allowed: container, pod)"
        )
    result = restricted_security_context()
    for part, known in (("pod", _POD_SECURITY), ("container", _CONTAINER_SECURITY)):
        fields = _mapping(given.get(part), f"{where}.{part}")
        for key in fields:
            if key not in known:
                raise InvalidConfiguration(f"{where}.{part}.{key}", "unknown field")
        result[part].update(_json_copy(fields, f"{where}.{part}"))
    return result


def _max_running(spec: dict[str, Any], where: str) -> int | None:
    """``spec.concurrency.maxRunning``: a whole number, or unset (no limit)."""
    concurrency = _mapping(spec.get("concurrency"), f"{where}.concurrency")
    value = concurrency.get("maxRunning")
    return None if value is None else _whole(value, f"{where}.concurrency.maxRunning", 0)


def parse_workgroup(obj: dict[str, Any]) -> Workgroup:
    """A workgroup from its custom resource; ``InvalidConfiguration`` when unusable."""
    name = _get(obj, "metadata.name", "")
    if not isinstance(name, str) or not name:
        raise InvalidConfiguration("workgroup metadata.name", "is required")
    where = f"workgroup {name}.spec"
    spec = _mapping(obj.get("spec"), where)
    shard = spec.get("cluster")
    if not isinstance(shard, str) or not shard:
        raise InvalidConfiguration(f"{where}.cluster", "must name a shard")
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, dict) for t in tolerations):
        raise InvalidConfiguration(f"{where}.tolerations", "expected a list of objects")
    capabilities = _mapping(spec.get("capabilities"), f"{where}.capabilities")
    affinity = _mapping(spec.get("affinity"), f"{where}.affinity")
    return Workgroup(
        name=name,
        shard=shard,
        description=str(spec.get("description") or ""),
        # copies: a workgroup owns its values, whatever later happens to the resource
        capabilities=_json_copy(capabilities, f"{where}.capabilities"),
        tolerations=_json_copy(tolerations, f"{where}.tolerations"),
        affinity=_json_copy(affinity, f"{where}.affinity"),
        max_running=_max_running(spec, where),
    )


def parse_template(obj: dict[str, Any]) -> Template:
    """A template from its custom resource; ``InvalidConfiguration`` when unusable."""
    name = _get(obj, "metadata.name", "")
    if not isinstance(name, str) or not name:
        raise InvalidConfiguration("template metadata.name", "is required")
    where = f"template {name}.spec"
    spec = _mapping(obj.get("spec"), where)
    image = _get(spec, "container.image")
    if not isinstance(image, str) or not image:
        raise InvalidConfiguration(f"{where}.container.image", "is required")
    workgroup = _get(spec, "workgroupRef.name")
    if not isinstance(workgroup, str) or not workgroup:
        raise InvalidConfiguration(f"{where}.workgroupRef.name", "is required")
    runtime = _mapping(spec.get("runtimeEnvironment"), f"{where}.runtimeEnvironment")
    errors = _mapping(spec.get("errorHandlingBehaviour"), f"{where}.errorHandlingBehaviour")
    payload = _mapping(spec.get("payloadConfiguration"), f"{where}.payloadConfiguration")
    resources = _mapping(
        _get(spec, "computeResources.customResources"), f"{where}.computeResources.customResources"
    )
    valid_for = payload.get("payloadValidFor")
    try:
        payload_valid_for = (
            parse_duration(str(valid_for)) if valid_for else DEFAULT_PAYLOAD_VALID_FOR
        )
    except ValueError as exc:
        raise InvalidConfiguration(
            f"{where}.payloadConfiguration.payloadValidFor", str(exc)
        ) from exc
    if payload_valid_for < MIN_PAYLOAD_VALID_FOR:  # its links would expire as handed out
        raise InvalidConfiguration(
            f"{where}.payloadConfiguration.payloadValidFor", "must be at least 1m"
        )
    payload_valid_for = min(payload_valid_for, MAX_PAYLOAD_VALID_FOR)  # S3 presigns no longer
    rt, eh = f"{where}.runtimeEnvironment", f"{where}.errorHandlingBehaviour"
    pc = f"{where}.payloadConfiguration"
    annotations = _mapping(runtime.get("annotations"), f"{rt}.annotations")
    env_from = runtime.get("mappedEnvironmentVariables") or []
    if not isinstance(env_from, list) or not all(isinstance(e, dict) for e in env_from):
        raise InvalidConfiguration(f"{rt}.mappedEnvironmentVariables", "expected a list of objects")
    return Template(
        name=name,
        image=image,
        registry=str(_get(spec, "container.registry", "") or ""),
        version_tag=str(_get(spec, "container.versionTag", "latest") or "latest"),
        service_account=str(_get(spec, "container.serviceAccountName") or "") or None,
        cpu_limit=str(_get(spec, "computeResources.cpuLimit", "1")),
        memory_limit=str(_get(spec, "computeResources.memoryLimit", "1Gi")),
        custom_resources={str(k): str(v) for k, v in resources.items()},
        workgroup=workgroup,
        command=_strings(spec.get("command"), f"{where}.command"),
        args=_strings(spec.get("args"), f"{where}.args"),
        env=_env(runtime.get("environmentVariables")),
        env_from=_json_copy(env_from, f"{rt}.mappedEnvironmentVariables"),  # its own copy
        annotations={str(k): str(v) for k, v in annotations.items()},
        deadline_seconds=_whole(runtime.get("deadlineSeconds"), f"{rt}.deadlineSeconds", 0)
        or DEFAULT_DEADLINE_SECONDS,
        maximum_retries=_whole(runtime.get("maximumRetries"), f"{rt}.maximumRetries", 0),
        transient_exit_codes=_codes(errors.get("transientExitCodes"), f"{eh}.transientExitCodes"),
        fatal_exit_codes=_codes(errors.get("fatalExitCodes"), f"{eh}.fatalExitCodes"),
        payload_valid_for=payload_valid_for,
        inline_payloads=bool(payload.get("inline", False)),
        inline_limit=_whole(
            payload.get("inlineMaxBytes"), f"{pc}.inlineMaxBytes", DEFAULT_INLINE_LIMIT
        )
        or DEFAULT_INLINE_LIMIT,
        security_context=_security_context(spec.get("securityContext"), f"{where}.securityContext"),
        max_running=_max_running(spec, where),
        configuration=_configuration(runtime.get("configuration"), f"{rt}.configuration"),
        allowed_secrets=frozenset(_strings(runtime.get("allowedSecrets"), f"{rt}.allowedSecrets")),
        allowed_images=tuple(
            _strings(_get(spec, "container.allowedImages"), f"{where}.container.allowedImages")
        ),
        retry_policy=_retry_policy(spec.get("retryPolicy"), f"{where}.retryPolicy"),
    )


DEFAULT_CONFIGURATION_MOUNT = "/etc/nexus/configuration"
_MOUNT_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+\Z")


def _configuration(value: Any, where: str) -> ConfigurationMount | None:
    """``runtimeEnvironment.configuration``: ``{configMap, mountPath?}`` or unset."""
    given = _mapping(value, where)
    if not given:
        return None
    name = given.get("configMap")
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise InvalidConfiguration(f"{where}.configMap", "expected the name of a ConfigMap")
    path = given.get("mountPath") or DEFAULT_CONFIGURATION_MOUNT
    if not isinstance(path, str) or not _MOUNT_PATH.match(path) or "/../" in f"{path}/":
        raise InvalidConfiguration(f"{where}.mountPath", "expected an absolute path")
    return {"configMap": name, "mountPath": path}


def _retry_policy(value: Any, where: str) -> RetryPolicy:
    try:
        return parse_policy(value, where)
    except PolicyError as exc:
        raise InvalidConfiguration(exc.field, exc.message) from exc


# -- overrides ---------------------------------------------------------------------------

OVERRIDE_ALIASES = {
    "imageRepository": "image",
    "imageRegistry": "registry",
    "imageTag": "versionTag",
    "version": "versionTag",
}
OVERRIDES = frozenset(
    {
        "image", "registry", "versionTag", "cpuLimit", "memoryLimit", "workgroup",
        "deadlineSeconds", "maximumRetries", "customResources",
    }
)  # fmt: skip
"""The fields of the container and its placement ``customConfiguration`` may set, under
their current names (:mod:`nexus.core.overrides` reads the others)."""


def _string(name: str, value: Any, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidConfiguration(f"customConfiguration.{name}", f"expected {expected}")
    return value


def _quantity(name: str, value: Any, pattern: re.Pattern[str], expected: str) -> str:
    """A resource quantity above zero (a zero limit would never let the container run)."""
    text = _string(name, value, pattern, expected)
    if not any(c in "123456789" for c in text.rstrip("KMGTikm")):
        raise InvalidConfiguration(f"customConfiguration.{name}", f"expected {expected}, not 0")
    return text


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidConfiguration(
            f"customConfiguration.{name}", f"expected an integer from {low} to {high}"
        )
    return value


def _custom_resources(name: str, value: Any) -> dict[str, str]:
    """Resources beside cpu and memory, as Kubernetes takes them in a container's limits:
    an extended resource (``domain/name``, outside kubernetes.io) in whole units, or
    ``ephemeral-storage`` / ``hugepages-<size>`` as a quantity."""
    where = f"customConfiguration.{name}"
    if not isinstance(value, dict):
        raise InvalidConfiguration(
            where, 'expected an object of resource name to quantity, e.g. {"nvidia.com/gpu": 1}'
        )
    result = {}
    for resource, amount in value.items():
        at = f"{where}.{resource}"
        if not isinstance(resource, str) or not _RESOURCE.match(resource):
            raise InvalidConfiguration(at, "expected a resource name such as nvidia.com/gpu")
        if resource in ("cpu", "memory"):
            raise InvalidConfiguration(at, f"expected customConfiguration.{resource}Limit instead")
        count = isinstance(amount, int) and not isinstance(amount, bool) and amount >= 0
        domain, _, _ = resource.rpartition("/")
        if domain:
            if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
                raise InvalidConfiguration(
                    at, "expected an extended resource outside kubernetes.io"
                )
            if not (count or (isinstance(amount, str) and _WHOLE.match(amount))):
                raise InvalidConfiguration(
                    at, "expected a whole number: extended resources come in whole units"
                )
        elif resource != "ephemeral-storage" and not resource.startswith("hugepages-"):
            raise InvalidConfiguration(
                at,
                "expected ephemeral-storage, hugepages-<size> or an extended resource"
                " such as nvidia.com/gpu",
            )
        elif not (count or (isinstance(amount, str) and _QUANTITY.match(amount))):
            raise InvalidConfiguration(at, "expected a quantity such as 10Gi")
        result[resource] = str(amount)
    return result


def normalise_overrides(raw: Any) -> ConfigurationOverrides:
    """Validated overrides under their current names; aliases folded in."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidConfiguration("customConfiguration", "expected an object")
    result: ConfigurationOverrides = {}
    given_as: dict[str, str] = {}  # current name -> the name the request used
    for given, value in raw.items():
        name = OVERRIDE_ALIASES.get(given, given)
        if name not in OVERRIDES:
            allowed = ", ".join(sorted(OVERRIDES | set(OVERRIDE_ALIASES)))
            raise InvalidConfiguration(
                f"customConfiguration.{given}", f"unknown field (allowed: {allowed})"
            )
        if value is None:
            continue
        if name in given_as:  # e.g. both imageTag and versionTag: which one was meant?
            raise InvalidConfiguration(
                f"customConfiguration.{given}",
                f"conflicts with customConfiguration.{given_as[name]}",
            )
        given_as[name] = given
        match name:
            case "image":
                result["image"] = _string(given, value, _IMAGE, "an image name such as team/model")
            case "registry":
                result["registry"] = _string(
                    given, value, _REGISTRY, "a registry host such as ghcr.io"
                )
            case "versionTag":
                result["versionTag"] = _string(given, value, _TAG, "an image tag such as 1.2.3")
            case "cpuLimit":
                result["cpuLimit"] = _quantity(
                    given, value, _CPU, "a CPU quantity such as 500m or 2"
                )
            case "memoryLimit":
                result["memoryLimit"] = _quantity(
                    given, value, _MEMORY, "a memory quantity such as 512Mi"
                )
            case "workgroup":
                result["workgroup"] = _string(given, value, DNS_LABEL, "a workgroup name")
            case "deadlineSeconds":
                result["deadlineSeconds"] = _integer(given, value, 1, MAX_DEADLINE_SECONDS)
            case "maximumRetries":
                result["maximumRetries"] = _integer(given, value, 0, MAX_RETRIES)
            case "customResources":
                result["customResources"] = _custom_resources(given, value)
            case _:  # a field of ConfigurationOverrides without a case here
                raise AssertionError(f"override {name!r} is not validated")
    return result


def apply(
    template: Template, overrides: ConfigurationOverrides, workgroups: Mapping[str, Workgroup]
) -> AppliedConfiguration:
    """The applied configuration of a run: the template with validated overrides, placed
    on the shard of its workgroup (one of ``workgroups``, by name)."""
    workgroup_name = overrides.get("workgroup", template.workgroup)
    workgroup = workgroups.get(workgroup_name)
    if workgroup is None:
        where = "customConfiguration.workgroup" if "workgroup" in overrides else "template"
        raise InvalidConfiguration(where, f"workgroup {workgroup_name!r} does not exist")
    applied: AppliedConfiguration = {
        "image": overrides.get("image", template.image),
        "registry": overrides.get("registry", template.registry),
        "versionTag": overrides.get("versionTag", template.version_tag),
        "serviceAccountName": template.service_account,
        "cpuLimit": overrides.get("cpuLimit", template.cpu_limit),
        "memoryLimit": overrides.get("memoryLimit", template.memory_limit),
        "customResources": {**template.custom_resources, **overrides.get("customResources", {})},
        "workgroup": workgroup.name,
        "shard": workgroup.shard,
        # copies: the applied configuration is the run's own, the template stays as it is.
        # Only envFrom nests; the other lists and mappings hold strings and numbers.
        "command": list(template.command),
        "args": list(template.args),
        "env": dict(template.env),
        "envFrom": _json_copy(template.env_from, "template") if template.env_from else [],
        "annotations": dict(template.annotations),
        "deadlineSeconds": overrides.get("deadlineSeconds", template.deadline_seconds),
        "maximumRetries": overrides.get("maximumRetries", template.maximum_retries),
        "transientExitCodes": list(template.transient_exit_codes),
        "fatalExitCodes": list(template.fatal_exit_codes),
    }
    if template.retry_policy:
        applied["retryPolicy"] = for_run(template.retry_policy, applied["memoryLimit"])
    if template.security_context != _RESTRICTED:  # the defaults are not stored with each run
        applied["securityContext"] = _json_copy(template.security_context, "template")
    return applied
