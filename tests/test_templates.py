"""Templates, workgroups and request overrides: parsing, validation and the applied config."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from nexus.core.templates import (
    DNS_LABEL,
    InvalidConfiguration,
    Template,
    Workgroup,
    apply,
    normalise_overrides,
    parse_template,
    parse_workgroup,
    restricted_security_context,
)
from nexus.scheduler.catalog import Catalog

FULL_TEMPLATE: dict[str, Any] = {
    "apiVersion": "science.sneaksanddata.com/v1",
    "kind": "NexusAlgorithmTemplate",
    "metadata": {"name": "forecast", "namespace": "nexus"},
    "spec": {
        "container": {
            "image": "team/forecast",
            "registry": "ghcr.io",
            "versionTag": "1.2.3",
            "serviceAccountName": "runner",
        },
        "computeResources": {
            "cpuLimit": "2",
            "memoryLimit": "4Gi",
            "customResources": {"nvidia.com/gpu": "1"},
        },
        "workgroupRef": {
            "name": "gpu-pool",
            "group": "science.sneaksanddata.com",
            "kind": "NexusAlgorithmWorkgroup",
        },
        "command": ["python", "-m", "forecast"],
        "args": ["--sas-uri={sas-uri}", "--request-id={request-id}"],
        "runtimeEnvironment": {
            "environmentVariables": [{"name": "MODE", "value": "fast"}, {"name": "EMPTY"}],
            "mappedEnvironmentVariables": [{"secretRef": {"name": "creds"}}],
            "annotations": {"team": "science"},
            "deadlineSeconds": 600,
            "maximumRetries": 2,
        },
        "errorHandlingBehaviour": {"transientExitCodes": [137, 143], "fatalExitCodes": [1]},
        "payloadConfiguration": {"payloadValidFor": "2h", "inline": True, "inlineMaxBytes": 1024},
    },
}

MINIMAL_TEMPLATE: dict[str, Any] = {
    "metadata": {"name": "tiny"},
    "spec": {"container": {"image": "team/tiny"}, "workgroupRef": {"name": "default"}},
}

WORKGROUP: dict[str, Any] = {
    "metadata": {"name": "gpu-pool"},
    "spec": {
        "description": "GPU machines",
        "cluster": "shard-gpu",
        "capabilities": {"gpu": True},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
    },
}


def with_changes(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``path`` (dotted) set to ``value``; ``...`` removes it."""
    obj = copy.deepcopy(base)
    target = obj
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    if value is ...:
        target.pop(last, None)
    else:
        target[last] = value
    return obj


@pytest.fixture
def catalog() -> Catalog:
    catalog = Catalog()
    for obj in (FULL_TEMPLATE, MINIMAL_TEMPLATE):
        template = parse_template(obj)
        catalog.templates[template.name] = template
    for name, shard in (("gpu-pool", "shard-gpu"), ("default", "shard-a"), ("cpu", "shard-b")):
        group = parse_workgroup(
            with_changes(with_changes(WORKGROUP, "metadata.name", name), "spec.cluster", shard)
        )
        catalog.workgroups[group.name] = group
    return catalog


# -- parsing -----------------------------------------------------------------------------


def test_parse_full_template() -> None:
    t = parse_template(FULL_TEMPLATE)
    assert (t.name, t.image, t.registry, t.version_tag) == (
        "forecast",
        "team/forecast",
        "ghcr.io",
        "1.2.3",
    )
    assert t.service_account == "runner"
    assert (t.cpu_limit, t.memory_limit) == ("2", "4Gi")
    assert t.custom_resources == {"nvidia.com/gpu": "1"}
    assert t.workgroup == "gpu-pool"
    assert t.command == ["python", "-m", "forecast"]
    assert t.args == ["--sas-uri={sas-uri}", "--request-id={request-id}"]
    assert t.env == {"MODE": "fast", "EMPTY": ""}
    assert t.env_from == [{"secretRef": {"name": "creds"}}]
    assert t.annotations == {"team": "science"}
    assert (t.deadline_seconds, t.maximum_retries) == (600, 2)
    assert (t.transient_exit_codes, t.fatal_exit_codes) == ([137, 143], [1])
    assert t.payload_valid_for == 7200
    assert (t.inline_payloads, t.inline_limit) == (True, 1024)


def test_parse_minimal_template_gets_defaults() -> None:
    t = parse_template(MINIMAL_TEMPLATE)
    assert (t.name, t.image, t.workgroup) == ("tiny", "team/tiny", "default")
    assert (t.registry, t.version_tag, t.service_account) == ("", "latest", None)
    assert (t.cpu_limit, t.memory_limit, t.custom_resources) == ("1", "1Gi", {})
    assert (t.command, t.args, t.env, t.env_from, t.annotations) == ([], [], {}, [], {})
    assert (t.deadline_seconds, t.maximum_retries) == (3600, 0)
    assert (t.transient_exit_codes, t.fatal_exit_codes) == ([], [])
    assert t.payload_valid_for == 24 * 3600
    assert (t.inline_payloads, t.inline_limit) == (False, 64 * 1024)


RESTRICTED = {
    "pod": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "container": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
}


def test_a_template_without_a_security_context_gets_the_restricted_profile(
    catalog: Catalog,
) -> None:
    template = parse_template(MINIMAL_TEMPLATE)
    assert template.security_context == RESTRICTED
    assert restricted_security_context() == RESTRICTED
    # the defaults are not stored with every run: the Job builder applies them
    assert "securityContext" not in apply(template, {}, catalog.workgroups)


def test_a_template_security_context_is_laid_over_the_defaults_key_by_key(
    catalog: Catalog,
) -> None:
    given = {
        "pod": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "container": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": True},
    }
    obj = with_changes(MINIMAL_TEMPLATE, "spec.securityContext", given)
    template = parse_template(obj)
    assert template.security_context == {
        "pod": {**RESTRICTED["pod"], "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "container": {
            "allowPrivilegeEscalation": True,  # relaxed by the template
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    applied = apply(template, {}, catalog.workgroups)
    assert applied["securityContext"] == template.security_context
    # the run's copy is its own, and so is the template's
    applied["securityContext"]["pod"]["runAsUser"] = 0
    obj["spec"]["securityContext"]["pod"]["runAsUser"] = 0
    assert template.security_context["pod"]["runAsUser"] == 1000
    assert parse_template(MINIMAL_TEMPLATE).security_context == RESTRICTED


def test_environment_as_a_mapping() -> None:
    obj = with_changes(
        MINIMAL_TEMPLATE, "spec.runtimeEnvironment", {"environmentVariables": {"A": 1}}
    )
    assert parse_template(obj).env == {"A": "1"}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("metadata.name", ..., "metadata.name"),
        ("spec", ..., "container.image"),
        ("spec", "not an object", "template tiny.spec"),
        ("spec.container", ..., "container.image"),
        ("spec.container.image", "", "container.image"),
        ("spec.container.image", 42, "container.image"),
        ("spec.workgroupRef", ..., "workgroupRef.name"),
        ("spec.workgroupRef.name", None, "workgroupRef.name"),
        ("spec.runtimeEnvironment", ["x"], "runtimeEnvironment"),
        ("spec.runtimeEnvironment.deadlineSeconds", "soon", "deadlineSeconds"),
        ("spec.runtimeEnvironment.deadlineSeconds", -5, "deadlineSeconds"),
        ("spec.runtimeEnvironment.maximumRetries", 1.5, "maximumRetries"),
        ("spec.runtimeEnvironment.annotations", ["a"], "annotations"),
        ("spec.runtimeEnvironment.mappedEnvironmentVariables", ["x"], "mappedEnvironmentVariables"),
        (
            "spec.runtimeEnvironment.mappedEnvironmentVariables",
            [{"secretRef": {"name": {"not", "json"}}}],
            "mappedEnvironmentVariables",
        ),
        ("spec.errorHandlingBehaviour.transientExitCodes", [1, "x"], "transientExitCodes[1]"),
        ("spec.errorHandlingBehaviour.fatalExitCodes", 1, "fatalExitCodes"),
        ("spec.errorHandlingBehaviour.fatalExitCodes", [1, 256], "fatalExitCodes[1]"),
        ("spec.errorHandlingBehaviour.transientExitCodes", [99999999999], "transientExitCodes[0]"),
        ("spec.payloadConfiguration.payloadValidFor", "forever", "payloadValidFor"),
        ("spec.payloadConfiguration.payloadValidFor", "0s", "payloadValidFor"),
        ("spec.payloadConfiguration.payloadValidFor", "59s", "payloadValidFor"),
        ("spec.payloadConfiguration.inlineMaxBytes", "big", "inlineMaxBytes"),
        ("spec.computeResources.customResources", "gpu", "customResources"),
        ("spec.command", "python -m x", "command"),
        ("spec.args", {"a": 1}, "args"),
        ("spec.securityContext", "restricted", "securityContext"),
        ("spec.securityContext.node", {}, "securityContext.node"),
        ("spec.securityContext.pod", ["x"], "securityContext.pod"),
        ("spec.securityContext.pod.runAsUsr", 1000, "securityContext.pod.runAsUsr"),
        ("spec.securityContext.container.privileged", {1, 2}, "securityContext.container"),
        ("spec.securityContext.container.hostNetwork", True, "container.hostNetwork"),
    ],
)
def test_unusable_template_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        parse_template(with_changes(MINIMAL_TEMPLATE, path, value))
    assert field in caught.value.field
    assert field in str(caught.value)


def test_a_template_payload_validity_beyond_s3s_longest_is_capped() -> None:
    obj = with_changes(MINIMAL_TEMPLATE, "spec.payloadConfiguration", {"payloadValidFor": "30d"})
    assert parse_template(obj).payload_valid_for == 7 * 24 * 3600


def test_numbers_as_strings_are_accepted_in_templates() -> None:
    obj = with_changes(
        MINIMAL_TEMPLATE,
        "spec.runtimeEnvironment",
        {"deadlineSeconds": "90", "maximumRetries": "3"},
    )
    t = parse_template(obj)
    assert (t.deadline_seconds, t.maximum_retries) == (90, 3)


def test_parse_workgroup() -> None:
    group = parse_workgroup(WORKGROUP)
    assert (group.name, group.shard, group.description) == ("gpu-pool", "shard-gpu", "GPU machines")
    assert group.capabilities == {"gpu": True}
    assert group.tolerations == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert group.affinity == {"nodeAffinity": {}}
    minimal = parse_workgroup({"metadata": {"name": "w"}, "spec": {"cluster": "s"}})
    assert (minimal.description, minimal.capabilities, minimal.tolerations, minimal.affinity) == (
        "",
        {},
        [],
        {},
    )


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("spec.cluster", ..., "spec.cluster"),
        ("spec.cluster", "", "spec.cluster"),
        ("metadata.name", ..., "metadata.name"),
        ("spec.tolerations", {"key": "x"}, "tolerations"),
        ("spec.affinity", "near", "affinity"),
        ("spec.affinity", {"weight": 2**70}, "affinity"),
    ],
)
def test_unusable_workgroup_names_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        parse_workgroup(with_changes(WORKGROUP, path, value))
    assert field in caught.value.field


# -- overrides -----------------------------------------------------------------------------


def test_no_overrides() -> None:
    assert normalise_overrides(None) == {}
    assert normalise_overrides({}) == {}
    assert normalise_overrides({"cpuLimit": None}) == {}  # null means absent


def test_every_override_when_valid() -> None:
    given = {
        "image": "team/other-model",
        "registry": "registry.example.com:5000/mirror",
        "versionTag": "2.0.0-rc.1",
        "cpuLimit": "500m",
        "memoryLimit": "512Mi",
        "workgroup": "cpu",
        "deadlineSeconds": 120,
        "maximumRetries": 0,
        "customResources": {"nvidia.com/gpu": 2, "example.com/fpga": "1"},
    }
    expected = {**given, "customResources": {"nvidia.com/gpu": "2", "example.com/fpga": "1"}}
    assert normalise_overrides(given) == expected


@pytest.mark.parametrize(
    ("alias", "name", "value"),
    [
        ("imageRepository", "image", "team/x"),
        ("imageTag", "versionTag", "3.1"),
        ("version", "versionTag", "3.1"),
    ],
)
def test_older_clients_names_are_aliases(alias: str, name: str, value: str) -> None:
    assert normalise_overrides({alias: value}) == {name: value}


def test_an_alias_conflicting_with_its_name_is_refused() -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        normalise_overrides({"versionTag": "1", "imageTag": "2"})
    assert caught.value.field == "customConfiguration.imageTag"
    assert "customConfiguration.versionTag" in caught.value.message
    with pytest.raises(InvalidConfiguration, match=r"customConfiguration\.version"):
        normalise_overrides({"imageTag": "1", "version": "1"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("image", "Team/Model"),
        ("image", "team//model"),
        ("image", 5),
        ("image", "team/model\n"),
        ("registry", "ghcr.io/UPPER"),
        ("registry", "host:port"),
        ("versionTag", "-leading-dash"),
        ("versionTag", "a" * 129),
        ("versionTag", "1.0 beta"),
        ("imageTag", "tag\n"),
        ("version", ""),
        ("imageRepository", "a b"),
        ("cpuLimit", "two"),
        ("cpuLimit", "0"),
        ("cpuLimit", "0m"),
        ("cpuLimit", 2),
        ("cpuLimit", "2\n"),
        ("cpuLimit", "\uff12"),  # a full-width digit two
        ("cpuLimit", "-1"),
        ("memoryLimit", "1GB"),
        ("memoryLimit", "0Gi"),
        ("memoryLimit", "512Mi\n"),
        ("workgroup", "Has_Caps"),
        ("workgroup", "x" * 64),
        ("workgroup", "pool\n"),
        ("deadlineSeconds", 0),
        ("deadlineSeconds", 7 * 24 * 3600 + 1),
        ("deadlineSeconds", "60"),
        ("deadlineSeconds", 60.5),
        ("deadlineSeconds", True),
        ("maximumRetries", -1),
        ("maximumRetries", 101),
        ("maximumRetries", False),
        ("customResources", "gpu=1"),
        ("customResources", {"nvidia.com/gpu": "lots"}),
        ("customResources", {"nvidia.com/gpu": -1}),
        ("customResources", {"nvidia.com/gpu": True}),
        ("customResources", {"bad key!": "1"}),
        ("customResources", {"cpu": "2"}),
        ("customResources", {"gpu": 1}),
        ("customResources", {"nvidia.com/gpu": "0.5"}),
        ("customResources", {"kubernetes.io/gpu": 1}),
        ("customResources", {"hugepages-2Mi": "some"}),
        ("customResources", {"nvidia.com/gpu": None}),
    ],
)
def test_every_invalid_override_names_its_field(name: str, value: Any) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        normalise_overrides({name: value})
    assert caught.value.field.startswith(f"customConfiguration.{name}")  # or its entry
    assert str(caught.value).startswith(f"{caught.value.field}: ")
    assert "expected" in caught.value.message


def test_unknown_override_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        normalise_overrides({"cpuLimit": "1", "privileged": True})
    assert caught.value.field == "customConfiguration.privileged"
    assert "unknown field" in caught.value.message
    for allowed in ("cpuLimit", "imageTag", "workgroup", "customResources"):
        assert allowed in caught.value.message


def test_overrides_must_be_an_object() -> None:
    for bad in ([], "cpu=1", 5):
        with pytest.raises(InvalidConfiguration) as caught:
            normalise_overrides(bad)
        assert caught.value.field == "customConfiguration"


def test_dns_label_refuses_a_trailing_newline() -> None:
    assert DNS_LABEL.match("forecast-2")
    for bad in ("forecast\n", "Forecast", "-x", "x-", "x" * 64, ""):
        assert not DNS_LABEL.match(bad)


# -- apply -------------------------------------------------------------------------------


def test_apply_without_overrides_is_the_template(catalog: Catalog) -> None:
    applied = apply(catalog.templates["forecast"], {}, catalog.workgroups)
    assert applied == {
        "image": "team/forecast",
        "registry": "ghcr.io",
        "versionTag": "1.2.3",
        "serviceAccountName": "runner",
        "cpuLimit": "2",
        "memoryLimit": "4Gi",
        "customResources": {"nvidia.com/gpu": "1"},
        "workgroup": "gpu-pool",
        "shard": "shard-gpu",
        "command": ["python", "-m", "forecast"],
        "args": ["--sas-uri={sas-uri}", "--request-id={request-id}"],
        "env": {"MODE": "fast", "EMPTY": ""},
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "annotations": {"team": "science"},
        "deadlineSeconds": 600,
        "maximumRetries": 2,
        "transientExitCodes": [137, 143],
        "fatalExitCodes": [1],
    }


def test_apply_merges_overrides_and_resolves_the_workgroups_shard(catalog: Catalog) -> None:
    overrides = normalise_overrides(
        {
            "imageTag": "9.9",
            "cpuLimit": "250m",
            "workgroup": "cpu",
            "maximumRetries": 5,
            "customResources": {"example.com/fpga": 1},
        }
    )
    applied = apply(catalog.templates["forecast"], overrides, catalog.workgroups)
    assert applied["versionTag"] == "9.9"
    assert applied["image"] == "team/forecast"  # not overridden
    assert applied["cpuLimit"] == "250m"
    assert applied["memoryLimit"] == "4Gi"
    assert (applied["workgroup"], applied["shard"]) == ("cpu", "shard-b")
    assert applied["maximumRetries"] == 5
    assert applied["deadlineSeconds"] == 600
    assert applied["customResources"] == {"nvidia.com/gpu": "1", "example.com/fpga": "1"}


def _containers(value: Any) -> list[Any]:
    """Every dict and list inside ``value``, ``value`` included."""
    if isinstance(value, dict):
        return [value, *(c for v in value.values() for c in _containers(v))]
    if isinstance(value, list):
        return [value, *(c for v in value for c in _containers(v))]
    return []


def _shared(a: Any, b: Any) -> list[Any]:
    """The dicts and lists found inside both ``a`` and ``b`` (the same objects, not equal ones)."""
    in_b = {id(c) for c in _containers(b)}
    return [c for c in _containers(a) if id(c) in in_b]


def _fields(obj: Template | Workgroup) -> list[Any]:
    return [getattr(obj, f.name) for f in dataclasses.fields(obj)]


def test_apply_does_not_share_state_with_the_template(catalog: Catalog) -> None:
    template = parse_template(copy.deepcopy(FULL_TEMPLATE))
    pristine = copy.deepcopy(template)
    applied = apply(template, {}, catalog.workgroups)
    expected = copy.deepcopy(applied)
    assert not _shared(applied, _fields(template))

    applied["args"].append("--more")
    applied["env"]["MODE"] = "slow"
    applied["envFrom"][0]["x"] = 1
    applied["envFrom"][0]["secretRef"]["name"] = "stolen"
    applied["envFrom"].append({"configMapRef": {"name": "extra"}})
    applied["customResources"]["nvidia.com/gpu"] = "8"
    applied["customResources"]["x"] = "1"
    applied["annotations"]["team"] = "other"
    applied["transientExitCodes"].append(1)
    assert template == pristine
    assert apply(template, {}, catalog.workgroups) == expected

    # the other way round: a template changed later leaves an applied configuration alone
    applied = apply(template, {}, catalog.workgroups)
    template.env_from[0]["secretRef"]["name"] = "rotated"
    template.custom_resources["nvidia.com/gpu"] = "4"
    template.command.append("--verbose")
    assert applied == expected


def test_parsing_does_not_share_state_with_the_resource() -> None:
    template_resource = copy.deepcopy(FULL_TEMPLATE)
    template_resource["spec"]["runtimeEnvironment"]["mappedEnvironmentVariables"].append(
        {"configMapRef": {"name": "settings", "optional": True}}
    )
    workgroup_resource = copy.deepcopy(WORKGROUP)
    workgroup_resource["spec"]["affinity"] = {
        "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1}]}
    }
    template = parse_template(template_resource)
    workgroup = parse_workgroup(workgroup_resource)
    assert not _shared(_fields(template), template_resource)
    assert not _shared(_fields(workgroup), workgroup_resource)

    pristine = (copy.deepcopy(template), copy.deepcopy(workgroup))
    runtime = template_resource["spec"]["runtimeEnvironment"]
    runtime["mappedEnvironmentVariables"][0]["secretRef"]["name"] = "changed"
    runtime["mappedEnvironmentVariables"][1]["configMapRef"]["optional"] = False
    workgroup_resource["spec"]["affinity"]["nodeAffinity"].clear()
    workgroup_resource["spec"]["tolerations"][0]["key"] = "changed"
    workgroup_resource["spec"]["capabilities"]["gpu"] = False
    assert (template, workgroup) == pristine


def test_apply_with_an_unknown_workgroup_names_where_it_came_from(catalog: Catalog) -> None:
    with pytest.raises(InvalidConfiguration) as caught:
        apply(catalog.templates["forecast"], {"workgroup": "nope"}, catalog.workgroups)
    assert caught.value.field == "customConfiguration.workgroup"
    assert "'nope'" in caught.value.message
    del catalog.workgroups["default"]
    with pytest.raises(InvalidConfiguration) as caught:
        apply(catalog.templates["tiny"], {}, catalog.workgroups)
    assert caught.value.field == "template"
    assert "'default'" in caught.value.message


def test_catalog_lookups(catalog: Catalog) -> None:
    assert catalog.template("forecast") is catalog.templates["forecast"]
    assert catalog.template("nope") is None
    assert catalog.workgroup("cpu") is catalog.workgroups["cpu"]
    assert catalog.workgroup("nope") is None
