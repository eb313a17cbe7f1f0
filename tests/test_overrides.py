"""The whole v1.2 customConfiguration, and the v1.2 spellings: null is absent, any casing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nexus.core.compatibility import (
    V12_STATUSES,
    FieldNames,
    GivenTwice,
    canonical,
    v12_error_message,
    v12_status,
)
from nexus.core.labels import SPECULATIVE_ANNOTATION, copy_names, speculative_copy
from nexus.core.overrides import FIELDS, ForbiddenConfiguration, apply, normalise
from nexus.core.runs import Stage
from nexus.core.templates import InvalidConfiguration, Workgroup, parse_template
from nexus.scheduler.jobs import CONFIGURATION_VOLUME
from nexus.scheduler.openapi import DOCUMENT

TEMPLATE: dict[str, Any] = {
    "metadata": {"name": "forecast"},
    "spec": {
        "container": {"image": "team/forecast", "versionTag": "1.0"},
        "workgroupRef": {"name": "default"},
        "runtimeEnvironment": {
            "environmentVariables": [{"name": "MODE", "value": "slow"}],
            "configuration": {"configMap": "forecast-config", "mountPath": "/etc/forecast"},
            "allowedSecrets": ["forecast-credentials", "shared"],
        },
    },
}
WORKGROUPS = {"default": Workgroup("default", "shard-0")}


def configured(**runtime: Any) -> Any:
    spec = copy.deepcopy(TEMPLATE)
    spec["spec"]["runtimeEnvironment"].update(runtime)
    return parse_template(spec)


def applied_with(overrides: dict[str, Any], **runtime: Any) -> Any:
    return apply(configured(**runtime), normalise(overrides), WORKGROUPS)


# -- null and casing ----------------------------------------------------------------------


def test_canonical_objects_are_returned_as_they_are() -> None:
    body = {"tag": "x", "algorithmParameters": {}}
    assert canonical(body, FieldNames(["tag", "algorithmParameters"])) is body


def test_nulls_are_dropped_and_any_casing_is_the_field() -> None:
    names = FieldNames(["algorithmParameters", "tag", "customConfiguration"])
    given = {"AlgorithmParameters": {"A": None}, "TAG": "t", "customconfiguration": None}
    # only the keys of the object are read: the parameters are the client's own
    assert canonical(given, names) == {"algorithmParameters": {"A": None}, "tag": "t"}


def test_an_unknown_key_stays_as_given_and_a_null_one_is_absent() -> None:
    names = FieldNames(["tag"])
    assert canonical({"Colour": "red", "tag": None}, names) == {"Colour": "red"}
    assert canonical({"colour": None}, names) == {}


def test_a_field_given_twice_is_refused_naming_both() -> None:
    with pytest.raises(GivenTwice, match=r"body\.Tag: the same field as body\.tag"):
        canonical({"tag": "a", "Tag": "b"}, FieldNames(["tag"]), "body")
    assert canonical({"tag": None, "Tag": "b"}, FieldNames(["tag"])) == {"tag": "b"}


def test_a_customconfiguration_of_nothing_but_nulls_is_no_override() -> None:
    every_field = dict.fromkeys(
        [
            "imageRepository", "imageTag", "deadlineSeconds", "maximumRetries", "env",
            "secrets", "args", "cpuLimit", "memoryLimit", "workgroup", "additionalWorkgroups",
            "version", "monitoringParameters", "customResources", "speculativeAttempts",
            "ImageRegistry", "somethingNew",
        ]
    )  # fmt: skip
    assert normalise(every_field) == {}
    assert normalise({"env": [], "secrets": [], "additionalWorkgroups": {}}) == {}


def test_pascal_case_overrides_are_read() -> None:
    overrides = normalise(
        {
            "ImageRegistry": "ghcr.io",
            "ImageTag": "2.0",
            "CpuLimit": "2",
            "Env": [{"Name": "A", "Value": "1", "ValueType": "PLAIN"}],
            "Args": [{"Name": "steps", "Value": "3", "ValueType": "RELATIVE_REFERENCE"}],
        }
    )
    assert overrides == {
        "registry": "ghcr.io",
        "versionTag": "2.0",
        "cpuLimit": "2",
        "env": [{"name": "A", "value": "1", "valueType": "PLAIN"}],
        "args": [{"name": "steps", "value": "3", "valueType": "RELATIVE_REFERENCE"}],
    }


# -- what each field does ----------------------------------------------------------------


def test_a_containers_own_nexus_variables_may_be_set() -> None:
    # containers built on the v1.2 Python client read their settings from NEXUS__* names
    applied = applied_with({"env": [{"name": "NEXUS__LOG_LEVEL", "value": "DEBUG"}]})
    assert applied["env"]["NEXUS__LOG_LEVEL"] == "DEBUG"


def test_env_goes_over_the_templates_and_relative_references_resolve_in_its_mount() -> None:
    applied = applied_with(
        {
            "env": [
                {"name": "MODE", "value": "fast", "valueType": "PLAIN"},
                {"name": "MODEL", "value": "models/a.json", "valueType": "RELATIVE_REFERENCE"},
                {"name": "EMPTY", "value": None, "valueType": None},
            ]
        }
    )
    assert applied["env"] == {"MODE": "fast", "MODEL": "/etc/forecast/models/a.json", "EMPTY": ""}
    assert applied["configuration"] == {
        "configMap": "forecast-config",
        "mountPath": "/etc/forecast",
    }


def test_a_relative_reference_without_a_mounted_configuration_is_refused() -> None:
    entry = {"name": "MODEL", "value": "a.json", "valueType": "RELATIVE_REFERENCE"}
    with pytest.raises(InvalidConfiguration, match="mounts none") as refused:
        applied_with({"env": [entry]}, configuration=None)
    assert refused.value.field == "customConfiguration.env[0].valueType"


def test_args_come_after_the_templates_as_name_value_pairs() -> None:
    applied = applied_with(
        {
            "args": [
                {"name": "max-iterations", "value": "10", "valueType": None},
                {"name": "weights", "value": "w.bin", "valueType": "RELATIVE_REFERENCE"},
            ]
        }
    )
    assert applied["extraArgs"] == ["--max-iterations=10", "--weights=/etc/forecast/w.bin"]


def test_only_secrets_the_template_allows_are_mapped() -> None:
    applied = applied_with({"secrets": ["shared", "forecast-credentials", "shared"]})
    assert applied["envFrom"] == [
        {"secretRef": {"name": "shared"}},
        {"secretRef": {"name": "forecast-credentials"}},
    ]
    with pytest.raises(ForbiddenConfiguration, match="'database' is not one template") as no:
        applied_with({"secrets": ["shared", "database"]})
    assert no.value.field == "customConfiguration.secrets[1]"
    with pytest.raises(ForbiddenConfiguration, match="allowedSecrets: none"):
        applied_with({"secrets": ["shared"]}, allowedSecrets=None)


@pytest.mark.parametrize(
    ("configuration", "field", "says"),
    [
        ({"env": "A=1"}, "customConfiguration.env", "expected a list"),
        ({"env": [["A", "1"]]}, "customConfiguration.env[0]", "expected an object"),
        ({"env": [{"value": "1"}]}, "customConfiguration.env[0].name", "variable name"),
        ({"env": [{"name": "A=B", "value": "1"}]}, "customConfiguration.env[0].name", "name"),
        ({"env": [{"name": "NEXUS__RUN_TOKEN"}]}, "customConfiguration.env[0].name", "set by"),
        ({"env": [{"name": "A"}, {"name": "A"}]}, "customConfiguration.env[1].name", "twice"),
        ({"env": [{"name": "A", "value": {}}]}, "customConfiguration.env[0].value", "string"),
        ({"env": [{"name": "A", "value": True}]}, "customConfiguration.env[0].value", "string"),
        (
            {"env": [{"name": "A", "valueType": "SECRET"}]},
            "customConfiguration.env[0].valueType",
            "PLAIN or RELATIVE_REFERENCE",
        ),
        ({"env": [{"name": "A", "valueType": 1}]}, "customConfiguration.env[0].valueType", "PLAIN"),
        (
            {"env": [{"name": "A", "value": "../x", "valueType": "RELATIVE_REFERENCE"}]},
            "customConfiguration.env[0].value",
            "relative path",
        ),
        (
            {"env": [{"name": "A", "value": "/etc/x", "valueType": "RELATIVE_REFERENCE"}]},
            "customConfiguration.env[0].value",
            "relative path",
        ),
        ({"env": [{"name": "A", "colour": "red"}]}, "customConfiguration.env[0].colour", "unknown"),
        ({"args": [{"name": "sas-uri", "value": "x"}]}, "customConfiguration.args[0].name", "set"),
        ({"args": [{"name": "--x", "value": "x"}]}, "customConfiguration.args[0].name", "argument"),
        ({"secrets": "shared"}, "customConfiguration.secrets", "list of Secret names"),
        ({"secrets": ["Not_A_Name"]}, "customConfiguration.secrets[0]", "name of a Secret"),
        ({"secrets": [None]}, "customConfiguration.secrets[0]", "name of a Secret"),
        ({"speculativeAttempts": -1}, "customConfiguration.speculativeAttempts", "from 0 to"),
        ({"speculativeAttempts": 99}, "customConfiguration.speculativeAttempts", "from 0 to"),
        ({"speculativeAttempts": "2"}, "customConfiguration.speculativeAttempts", "integer"),
        ({"speculativeAttempts": True}, "customConfiguration.speculativeAttempts", "integer"),
        (
            {"additionalWorkgroups": {"a": "b"}},
            "customConfiguration.additionalWorkgroups",
            "exactly one workgroup",
        ),
        (
            {"monitoringParameters": ["latency"]},
            "customConfiguration.monitoringParameters",
            "GET /metrics",
        ),
        ({"colour": "red"}, "customConfiguration.colour", "unknown field"),
        ({"imageTag": "1", "ImageTag": "2"}, "customConfiguration", "the same field"),
    ],
)
def test_bad_overrides_name_their_field(configuration: Any, field: str, says: str) -> None:
    with pytest.raises(InvalidConfiguration) as refused:
        applied_with(configuration)
    assert refused.value.field == field, refused.value
    assert says in refused.value.message, refused.value


# -- statuses ------------------------------------------------------------------------------


def test_every_stage_has_a_v12_status() -> None:
    assert {v12_status(stage) for stage in Stage} <= set(V12_STATUSES)
    assert v12_status(Stage.SCHEDULING_FAILED) == "SCHEDULING_TIMEOUT"
    assert v12_status(Stage.CANCELLED) == "CANCELLED"


def test_a_scheduling_timeout_says_why_it_could_not_be_scheduled() -> None:
    assert (
        v12_error_message(Stage.SCHEDULING_FAILED, "ImagePullFailed", "no such image")
        == "ImagePullFailed: no such image"
    )
    assert v12_error_message(Stage.SCHEDULING_FAILED, None, None) == "scheduling failed"
    assert v12_error_message(Stage.COMPLETED, None, None) is None
    assert v12_error_message(Stage.RUNNING, "x", "y") is None


def test_the_mounted_configuration_is_a_volume_of_the_job() -> None:
    assert CONFIGURATION_VOLUME == "nexus-configuration"
    with pytest.raises(InvalidConfiguration, match="configMap"):
        configured(configuration={"mountPath": "/x"})
    with pytest.raises(InvalidConfiguration, match="absolute path"):
        configured(configuration={"configMap": "c", "mountPath": "relative/x"})
    assert configured(configuration={"configMap": "c"}).configuration == {
        "configMap": "c",
        "mountPath": "/etc/nexus/configuration",
    }


def test_the_copies_of_a_run_are_named_and_numbered() -> None:
    assert copy_names("id", 3) == ["id", "id-copy-2", "id-copy-3"]
    assert copy_names("id", 0) == ["id"]
    assert speculative_copy({SPECULATIVE_ANNOTATION: "2/3"}) == (2, 3)
    for broken in ("", "2", "4/3", "0/3", "a/b", "-1/3"):
        assert speculative_copy({SPECULATIVE_ANNOTATION: broken}) is None, broken
    assert speculative_copy(None) is None


def test_the_openapi_description_documents_every_field_of_customconfiguration() -> None:
    described = DOCUMENT["components"]["schemas"]["CustomConfiguration"]["properties"]
    assert set(described) == set(FIELDS), set(described) ^ set(FIELDS)
    assert all(field.get("description") for field in described.values())


def test_runs_without_overrides_share_one_applied_configuration_per_template_version() -> None:
    template = configured()
    first = apply(template, normalise(None), WORKGROUPS)
    assert apply(template, normalise({}), WORKGROUPS) is first
    assert apply(template, normalise({"cpuLimit": "2"}), WORKGROUPS) is not first
    # a template or a workgroup replaced (a changed resource) gives its own
    assert apply(configured(), {}, WORKGROUPS) is not first
    moved = {"default": Workgroup("default", "shard-1")}
    assert apply(template, {}, moved)["shard"] == "shard-1"
    assert apply(template, {}, WORKGROUPS)["shard"] == "shard-0"
