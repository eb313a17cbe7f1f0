"""The Go Nexus v1 shapes, translated without a server: requests in, answers out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from nexus.core.httpapi import ApiError
from nexus.core.templates import AppliedConfiguration
from nexus.scheduler.goshapes import (
    GO_ZERO_TIME,
    applied_spec,
    go_duration,
    go_time,
    overrides_spec,
    run_body,
)


def test_each_mergeable_field_becomes_its_nexus_override() -> None:
    body = run_body(
        {
            "algorithmParameters": {"a": 1},
            "customConfiguration": {
                "container": {"image": "team/algo", "registry": "r.io", "versionTag": "2"},
                "computeResources": {
                    "cpuLimit": "2",
                    "memoryLimit": "1Gi",
                    "customResources": {"nvidia.com/gpu": "1"},
                },
                "workgroupRef": {"name": "gpu", "group": "science.sneaksanddata.com"},
                "runtimeEnvironment": {
                    "deadlineSeconds": 60,
                    "maximumRetries": 1,
                    "environmentVariables": [{"name": "MODE", "value": "fast"}],
                    "mappedEnvironmentVariables": [{"secretRef": {"name": "creds"}}],
                },
                "payloadConfiguration": {"payloadValidFor": "2h"},
            },
            "requestApiVersion": "v1",
            "tag": "t",
        }
    )
    assert body == {
        "algorithmParameters": {"a": 1},
        "tag": "t",
        "parentRequest": None,
        "payloadValidFor": "2h",
        "customConfiguration": {
            "image": "team/algo",
            "registry": "r.io",
            "versionTag": "2",
            "cpuLimit": "2",
            "memoryLimit": "1Gi",
            "customResources": {"nvidia.com/gpu": "1"},
            "workgroup": "gpu",
            "deadlineSeconds": 60,
            "maximumRetries": 1,
            "env": [{"name": "MODE", "value": "fast", "valueType": "PLAIN"}],
            "secrets": ["creds"],
        },
    }


def test_go_zero_values_are_absent() -> None:
    body = run_body(
        {
            "algorithmParameters": {},
            "customConfiguration": {
                "container": {"image": "", "registry": "", "versionTag": ""},
                "computeResources": {"cpuLimit": "", "limits": None, "defaultResourceQuota": ""},
                "command": "",
                "args": [],
                "runtimeEnvironment": {"annotations": {}, "environmentVariables": []},
            },
            "tag": "",
        }
    )
    assert body == {
        "algorithmParameters": {},
        "tag": None,
        "parentRequest": None,
        "payloadValidFor": None,
    }


@pytest.mark.parametrize(
    ("configuration", "named"),
    [
        ({"command": "run.sh"}, "customConfiguration.command"),
        ({"container": {"serviceAccountName": "admin"}}, "customConfiguration.container.serviceAccountName"),
        ({"computeResources": {"requests": {"cpu": "1"}}}, "customConfiguration.computeResources.requests"),
        ({"runtimeEnvironment": {"storageMounts": {"pvc": {"name": "x"}}}}, "customConfiguration.runtimeEnvironment.storageMounts"),
        ({"workgroupRef": {"kind": "Pod"}}, "customConfiguration.workgroupRef.kind"),
        ({"container": {"versionTag": "a b"}}, "customConfiguration.container.versionTag"),
        ({"runtimeEnvironment": {"environmentVariables": [{"name": "NEXUS__REQUEST_ID", "value": "1"}]}}, "customConfiguration.runtimeEnvironment.environmentVariables[0].name"),
        ({"runtimeEnvironment": {"mappedEnvironmentVariables": [{"secretRef": {"name": "s"}, "prefix": "P_"}]}}, "customConfiguration.runtimeEnvironment.mappedEnvironmentVariables[0].prefix"),
        ({"shape": {}}, "customConfiguration.shape"),
    ],
)  # fmt: skip
def test_what_cannot_take_effect_is_refused_by_its_go_name(
    configuration: dict[str, Any], named: str
) -> None:
    with pytest.raises(ApiError) as refused:
        run_body({"algorithmParameters": {}, "customConfiguration": configuration})
    assert refused.value.status == 400
    assert refused.value.message.startswith(f"{named}:"), refused.value.message


def test_times_and_durations_are_written_as_go_writes_them() -> None:
    assert go_time(None) == GO_ZERO_TIME
    assert go_time(datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.600000Z"
    )
    whole = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert go_time(whole) == "2026-01-02T01:04:05.000000Z"  # sorts as a string does
    assert go_time(whole) < go_time(whole + timedelta(microseconds=1))
    assert go_duration(timedelta(hours=24)) == "24h0m0s"
    assert go_duration(timedelta(minutes=90)) == "1h30m0s"
    assert go_duration(timedelta(seconds=90)) == "1m30s"
    assert go_duration(timedelta(seconds=5)) == "5s"


def test_configurations_are_answered_as_algorithm_specs() -> None:
    applied: AppliedConfiguration = {
        "image": "algorithms/echo",
        "registry": "example.io",
        "versionTag": "1.0",
        "serviceAccountName": None,
        "cpuLimit": "1",
        "memoryLimit": "1Gi",
        "customResources": {},
        "workgroup": "default",
        "shard": "shard-0",
        "command": ["python", "-m", "echo"],
        "args": ["--sas-uri={sas-uri}"],
        "env": {"MODE": "fast"},
        "envFrom": [],
        "annotations": {},
        "deadlineSeconds": 60,
        "maximumRetries": 0,
        "transientExitCodes": [],
        "fatalExitCodes": [2],
    }
    assert applied_spec(applied) == {
        "container": {"image": "algorithms/echo", "registry": "example.io", "versionTag": "1.0"},
        "computeResources": {"cpuLimit": "1", "memoryLimit": "1Gi"},
        "workgroupRef": {
            "name": "default",
            "group": "science.sneaksanddata.com",
            "kind": "NexusAlgorithmWorkgroup",
        },
        "command": "python -m echo",
        "args": ["--sas-uri={sas-uri}"],
        "runtimeEnvironment": {
            "deadlineSeconds": 60,
            "maximumRetries": 0,
            "environmentVariables": [{"name": "MODE", "value": "fast"}],
        },
        "errorHandlingBehaviour": {"transientExitCodes": [], "fatalExitCodes": [2]},
    }
    assert overrides_spec({"versionTag": "2", "workgroup": "gpu", "secrets": ["s"]}) == {
        "container": {"versionTag": "2"},
        "workgroupRef": {
            "name": "gpu",
            "group": "science.sneaksanddata.com",
            "kind": "NexusAlgorithmWorkgroup",
        },
        "runtimeEnvironment": {"mappedEnvironmentVariables": [{"secretRef": {"name": "s"}}]},
    }
