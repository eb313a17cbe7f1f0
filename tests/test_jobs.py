"""The Job a run becomes (DESIGN §3): every field the algorithm contract and Kubernetes need."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson

from nexus.core.labels import (
    ALGORITHM_LABEL,
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    CONTRACT_ENV,
    PARENT_LABEL,
    REQUEST_LABEL,
    SHARD_ANNOTATION,
)
from nexus.core.runs import Checkpoint, Stage
from nexus.core.templates import Workgroup
from nexus.scheduler.jobs import JobBodies, RunLinks, build_job, serialise
from nexus_dev.cluster.expansion import container_env, expand

RUN = UUID("5f0c4f3e-8a43-4c8e-9d0b-2f7d7c1e9a11")
PARENT = "0b6c8f5e-8a1c-4b7e-9d1e-2f3a4b5c6d7e"
LINKS = RunLinks(
    input_url="https://scheduler/input?sig=1",
    result_upload_url="https://s3/results/put?sig=2",
    receiver_url="https://receiver-gpu",
    run_token="token-abc",
)
APPLIED: dict[str, Any] = {
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
    "args": ["--sas-uri={sas-uri}", "--request-id={request-id}", "--name={algorithm-name}"],
    "env": {"MODE": "fast"},
    "envFrom": [{"secretRef": {"name": "creds"}}],
    "annotations": {"team": "science"},
    "deadlineSeconds": 600,
    "maximumRetries": 2,
    "transientExitCodes": [143, 137],
    "fatalExitCodes": [1],
}
GPU_POOL = Workgroup(
    name="gpu-pool",
    shard="shard-gpu",
    tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
)


def checkpoint(applied: dict[str, Any], parent: dict[str, str] | None = None) -> Checkpoint:
    now = datetime.now(UTC)
    return Checkpoint(
        algorithm="forecast", id=RUN, stage=Stage.BUFFERED, caller="tests",
        received_by_host="scheduler-0", received_at=now, last_modified=now,
        applied_configuration=applied, payload_valid_for=timedelta(hours=1), payload_uri=None,
        has_inline_payload=True, result_uri=None, failure_cause=None, failure_details=None,
        sent_at=None, configuration_overrides=None, content_hash=None, tag=None,
        api_version="v1.2", job_uid=None, parent=parent, shard=None, attempts=0,
        idempotency_key=None,
    )  # fmt: skip


def test_the_job_carries_the_whole_contract() -> None:
    parent = {"requestId": PARENT, "algorithmName": "planner"}
    job = build_job(
        checkpoint(APPLIED, parent),
        LINKS,
        workgroup=GPU_POOL,
        ttl_after_finished=300,
    )
    name = str(RUN)
    labels = {
        ALGORITHM_LABEL: "forecast",
        COMPONENT_LABEL: "algorithm-run",
        REQUEST_LABEL: name,
        PARENT_LABEL: PARENT,
        ATTEMPT_LABEL: "1",
    }
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    # a label names the parent; no owner reference: the child's Job must outlive the
    # parent's (Kubernetes deletes a Job with its owner)
    assert job["metadata"] == {
        "name": name,
        "labels": labels,
        "annotations": {SHARD_ANNOTATION: "shard-gpu"},
    }
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (2, 600)
    assert spec["ttlSecondsAfterFinished"] == 300
    # fatal codes fail the Job at once; with transient codes listed, so does any other
    # code; a pod Kubernetes disrupted is started again, whatever its exit code
    assert spec["podFailurePolicy"] == {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": name, "operator": "In", "values": [1]},
            },
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": name, "operator": "NotIn", "values": [137, 143]},
            },
        ]
    }
    pod = spec["template"]
    assert pod["metadata"] == {"labels": labels, "annotations": {"team": "science"}}
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["serviceAccountName"] == "runner"
    assert pod["spec"]["tolerations"] == GPU_POOL.tolerations
    assert pod["spec"]["affinity"] == GPU_POOL.affinity
    (container,) = pod["spec"]["containers"]
    assert container["name"] == name
    assert container["image"] == "ghcr.io/team/forecast:1.2.3"
    assert container["command"] == ["python", "-m", "forecast"]
    assert container["args"] == [
        f"--sas-uri={LINKS.input_url}",
        f"--request-id={name}",
        "--name=forecast",
    ]
    assert container["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert container["resources"] == {
        "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
        "requests": {"cpu": "2", "memory": "4Gi"},
    }
    assert {e["name"]: e["value"] for e in container["env"]} == {
        "MODE": "fast",
        "NEXUS__ALGORITHM_NAME": "forecast",
        "NEXUS__SHARD_NAME": "shard-gpu",
        "NEXUS__REQUEST_ID": name,
        "NEXUS__ATTEMPT": "1",
        "NEXUS__RECEIVER_URL": "https://receiver-gpu",
        "NEXUS__RUN_TOKEN": "token-abc",
        "NEXUS__RESULT_UPLOAD_URL": LINKS.result_upload_url,
        "NEXUS__CRYSTAL_RECEIVER_URL": "https://receiver-gpu",
        "CRYSTAL__ALGORITHM_NAME": "forecast",
        "NEXUS__PARENT_REQUEST_ID": PARENT,
        "NEXUS__PARENT_ALGORITHM_NAME": "planner",
    }
    assert orjson.loads(serialise(job)) == job


def test_exit_codes_make_a_policy_kubernetes_takes() -> None:
    """Ordered, each once, and no 0 among the fatal ones (a success cannot fail a Job);
    also for configurations stored before templates were checked for these."""
    config = {**APPLIED, "fatalExitCodes": [0, 3, 2, 3], "transientExitCodes": [143, 0, 143]}
    job = build_job(checkpoint(config), LINKS, workgroup=None, ttl_after_finished=60)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert [r.get("onExitCodes", {}).get("values") for r in rules] == [None, [2, 3], [0, 143]]
    only_zero = {**APPLIED, "fatalExitCodes": [0], "transientExitCodes": []}
    job = build_job(checkpoint(only_zero), LINKS, workgroup=None, ttl_after_finished=60)
    assert "podFailurePolicy" not in job["spec"]


def test_a_plain_template_gets_the_contracts_default_arguments_and_nothing_optional() -> None:
    plain = {
        key: APPLIED[key]
        for key in (
            "image", "versionTag", "cpuLimit", "memoryLimit", "workgroup", "shard",
            "deadlineSeconds", "maximumRetries",
        )
    }  # fmt: skip
    job = build_job(checkpoint(plain), LINKS, workgroup=None, ttl_after_finished=60)
    name = str(RUN)
    assert "ownerReferences" not in job["metadata"]
    assert "podFailurePolicy" not in job["spec"]
    pod_spec = job["spec"]["template"]["spec"]
    assert not {"serviceAccountName", "tolerations", "affinity"} & set(pod_spec)
    (container,) = pod_spec["containers"]
    assert container["image"] == "team/forecast:1.2.3"
    assert container["args"] == [f"--sas-uri={LINKS.input_url}", f"--request-id={name}"]
    assert not {"command", "envFrom"} & set(container)
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    env = {e["name"] for e in container["env"]}
    assert "NEXUS__RUN_TOKEN" in env and "NEXUS__PARENT_REQUEST_ID" not in env
    assert "NEXUS__INPUT" not in env  # the container fetches its input from the link


def test_a_small_input_travels_in_the_job_and_only_the_runs_own() -> None:
    links = dataclasses.replace(LINKS, input_content='{"horizon": 7, "text": "héllo"}')
    job = build_job(checkpoint(APPLIED), links, workgroup=None, ttl_after_finished=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert orjson.loads(env["NEXUS__INPUT"]) == {"horizon": 7, "text": "héllo"}
    assert container["args"][0] == f"--sas-uri={LINKS.input_url}"  # for older containers
    # Kubernetes expands $(VAR) in env values: the input reaches its container unchanged,
    # and no other variable's value (the run token here) is spliced into it
    document = '{"price": "$$5", "ref": "$(NEXUS__RUN_TOKEN)", "open": "$(", "end": "$"}'
    links = dataclasses.replace(LINKS, input_content=document)
    job = build_job(checkpoint(APPLIED), links, workgroup=None, ttl_after_finished=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container_env(container)["NEXUS__INPUT"] == document
    # a template's own NEXUS__INPUT never stands for a run's input
    posing = {**APPLIED, "env": {"NEXUS__INPUT": "{}"}}
    job = build_job(checkpoint(posing), LINKS, workgroup=None, ttl_after_finished=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert "NEXUS__INPUT" not in {e["name"] for e in container["env"]}


def test_a_callers_env_and_args_reach_the_container_as_sent() -> None:
    """Kubernetes expands $(VAR) and reads $$ as $ in env values and arguments: what a
    caller sets is taken literally, what the template sets stays the operator's template."""
    value = "$(NEXUS__RUN_TOKEN) costs $$5, $(MODE) $("
    applied = {
        **APPLIED,
        "env": {"MODE": "fast", "FROM_TEMPLATE": "$(MODE)", "MINE": value, "PATH_OF": "/c/$(x)"},
        "extraArgs": [f"--mine={value}"],
    }
    overrides: Any = {
        "env": [
            {"name": "MINE", "value": value, "valueType": "PLAIN"},
            {"name": "PATH_OF", "value": "$(x)", "valueType": "RELATIVE_REFERENCE"},
        ],
        "args": [{"name": "mine", "value": value, "valueType": "PLAIN"}],
    }
    run = dataclasses.replace(checkpoint(applied), configuration_overrides=overrides)
    job = build_job(run, LINKS, workgroup=None, ttl_after_finished=60)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = container_env(container)
    assert env["MINE"] == value and env["PATH_OF"] == "/c/$(x)"
    assert env["FROM_TEMPLATE"] == "fast"  # the operator's reference, resolved
    assert env["NEXUS__RUN_TOKEN"] == LINKS.run_token  # the contract's own, as written
    assert [expand(arg, env) for arg in container["args"][3:]] == [f"--mine={value}"]
    assert [expand(arg, env) for arg in container["args"][:3]] == container["args"][:3]


def test_placeholders_are_filled_once_and_a_value_is_never_read_for_more() -> None:
    """An input URL the caller stored (an input given by reference) is the caller's text:
    a placeholder in it, or one that it completes with the argument's own text around it,
    is not filled; and a body made from a template is build_job's for every run of the
    configuration, not only the first, whose body checked the template."""
    applied = {**APPLIED, "args": ["--sas-uri={sas-uri}", "--x={req{sas-uri}-id}"]}
    bodies = JobBodies()
    for url in ("https://in/1", "https://in/{request-id}", "uest"):
        run = dataclasses.replace(checkpoint(applied), id=uuid4())
        links = dataclasses.replace(LINKS, input_url=url)
        job = build_job(run, links, workgroup=None, ttl_after_finished=60)
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["args"][:2] == [f"--sas-uri={url}", f"--x={{req{url}-id}}"]
        made = bodies.body(run, links, workgroup=None, ttl_after_finished=60)
        assert made == serialise(job)
    assert bodies.templates == 1


def test_a_run_without_security_contexts_gets_the_restricted_profile() -> None:
    """Templates that keep the defaults, and runs accepted before templates had them."""
    job = build_job(checkpoint(APPLIED), LINKS, workgroup=None, ttl_after_finished=60)
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod_spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_a_run_carries_its_templates_security_contexts() -> None:
    security = {
        "pod": {"runAsNonRoot": True, "runAsUser": 1000},
        "container": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }
    config = {**APPLIED, "securityContext": security}
    job = build_job(checkpoint(config), LINKS, workgroup=None, ttl_after_finished=60)
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["securityContext"] == security["pod"]
    assert pod_spec["containers"][0]["securityContext"] == security["container"]


def test_every_variable_nexus_sets_is_one_a_request_cannot() -> None:
    applied = {**APPLIED, "env": {}, "speculativeAttempts": 2}
    links = dataclasses.replace(
        LINKS,
        result_inline_limit=1024,
        scheduler_url="https://scheduler",
        run_credential="nexus-run.forecast.x",
        input_content='{"horizon": 7}',
    )
    parent = {"requestId": PARENT, "algorithmName": "planner"}
    for copy in (1, 2):
        job = build_job(
            checkpoint(applied, parent),
            links,
            workgroup=GPU_POOL,
            ttl_after_finished=300,
            copy=copy,
        )
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert {e["name"] for e in container["env"]} == CONTRACT_ENV


def test_a_later_attempt_is_a_job_of_its_own_name_with_the_same_container() -> None:
    run = dataclasses.replace(checkpoint(APPLIED, None), attempt=3)
    job = build_job(run, LINKS, workgroup=GPU_POOL, ttl_after_finished=300)
    assert job["metadata"]["name"] == f"{RUN}-a3"
    assert job["metadata"]["labels"][ATTEMPT_LABEL] == "3"
    assert job["metadata"]["labels"][REQUEST_LABEL] == str(RUN)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == str(RUN)
    assert {"name": "NEXUS__REQUEST_ID", "value": str(RUN)} in container["env"]


def test_bodies_made_from_a_template_are_the_jobs_byte_for_byte() -> None:
    """Each body is that of build_job, serialised, whichever run, links and configuration:
    runs sharing a configuration object share its template, runs of another kind (a
    parent, copies, a caller's env) are built the plain way, and a configuration holding
    what a template would mistake for a run's value is built the plain way too."""
    bodies = JobBodies()
    credentialed = dataclasses.replace(
        LINKS, scheduler_url="https://scheduler", run_credential="nxr.forecast.x.1.y.z"
    )
    odd = {
        **APPLIED,
        "env": {"MODE": '"quoted" \\ and \n newline', "ID": str(RUN)},
        "args": ["{sas-uri}{request-id}", "\ue0001\ue001", "--id={request-id}"],
    }
    inputs = [None, '{"price": "$$5", "text": "héllo \\"x\\"\\n", "ctl": "\\u0001"}']
    plain = {k: v for k, v in APPLIED.items() if k not in ("args", "command", "envFrom")}
    overrides: Any = {"env": [{"name": "MODE", "value": "$x", "valueType": "PLAIN"}]}
    kinds = [
        dataclasses.replace(checkpoint(APPLIED), attempt=3),
        checkpoint(plain),
        checkpoint(odd),
        checkpoint(APPLIED, parent={"requestId": PARENT, "algorithmName": "parent"}),
        checkpoint({**APPLIED, "speculativeAttempts": 2}),
        dataclasses.replace(
            checkpoint(APPLIED),
            configuration_overrides=overrides,
        ),
    ]
    made = 0
    for run in kinds:
        for links in (LINKS, credentialed):
            for content in inputs:
                for workgroup in (None, GPU_POOL):
                    for _ in range(3):  # another run of the same configuration each time
                        each = dataclasses.replace(run, id=uuid4())
                        given = dataclasses.replace(
                            links,
                            input_content=content,
                            input_url=f'https://scheduler/in/{each.id}?s="{made}"'
                            + ("&{request-id}" if made % 5 == 0 else ""),
                            run_token=f"token-{made}",
                        )
                        expected = serialise(
                            build_job(each, given, workgroup=workgroup, ttl_after_finished=60)
                        )
                        assert (
                            bodies.body(each, given, workgroup=workgroup, ttl_after_finished=60)
                            == expected
                        )
                        made += 1
    assert made == len(kinds) * 2 * 2 * 2 * 3
    assert bodies.templates == 2 * 8  # the first two kinds, in each of their 8 settings
