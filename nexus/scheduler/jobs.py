"""The Kubernetes Job of a run (DESIGN §3), built from its applied configuration.

The Job and its single container are named after the request id, so creating it twice is
harmless (the second answer is 409); a retried run's later attempts are Jobs named
``<id>-a<n>`` (:func:`nexus.core.retrying.job_name`), each harmless to create twice too.
The container gets the input URL and the request id through the template's ``args``
placeholders (``{sas-uri}``, ``{request-id}``), and the ``NEXUS__*`` environment of the
algorithm contract, including a run token that proves its completion to the receiver and a
presigned URL for uploading the result. A small input kept inline also travels in the Job
itself, as ``NEXUS__INPUT`` (the document's UTF-8 text, each ``$`` doubled so that
Kubernetes' ``$(VAR)`` expansion gives it back unchanged): an algorithm that reads it there
needs no request for its input; the input URL is given all the same, for containers that
do not know the variable. What a caller sets in ``customConfiguration`` (its ``env``
values, its ``args``) is written the same way, so that it reaches the container as sent and
never splices another variable (a template's Secret, the run token) into it; the template's
own values are the operator's, and stay Kubernetes templates.

The pod and its container get the template's security contexts, which hold the Pod
Security "restricted" defaults unless the template relaxed them; a configuration stored
before templates had them gets those defaults.

Failure handling is Kubernetes': ``backoffLimit`` from ``maximumRetries``,
``activeDeadlineSeconds`` from ``deadlineSeconds``, and a ``podFailurePolicy`` that fails the
Job at once on a fatal exit code and, when the template lists transient exit codes, on any
other code too: then only transient failures are retried. Such a policy first ignores a pod
that Kubernetes disrupted (eviction, preemption, a node scaled away): its exit code (137,
143) says nothing of the algorithm, so the pod is started again without using a retry.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from typing import Any

import orjson

from nexus.core.labels import (
    ALGORITHM_LABEL,
    ALGORITHM_RUN,
    ATTEMPT_LABEL,
    COMPONENT_LABEL,
    PARENT_LABEL,
    REQUEST_LABEL,
    SHARD_ANNOTATION,
    SPECULATIVE_ANNOTATION,
    copy_name,
)
from nexus.core.retrying import job_name
from nexus.core.runs import Checkpoint, record
from nexus.core.templates import (
    AppliedConfiguration,
    ConfigurationOverrides,
    Workgroup,
    restricted_security_context,
)

PLACEHOLDERS = ("{sas-uri}", "{request-id}", "{algorithm-name}")
CONFIGURATION_VOLUME = "nexus-configuration"
"""The volume of a template's mounted configuration (``runtimeEnvironment.configuration``)."""
DISRUPTION_RULE = {
    "action": "Ignore",
    # status: defaulted by API servers, yet required by the OpenAPI schema of 1.31 to 1.36
    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
}


@record
class RunLinks:
    """The per-run URLs and secrets a Job carries."""

    input_url: str
    result_upload_url: str
    receiver_url: str
    run_token: str
    result_inline_limit: int = 0
    """Bytes of result the receiver takes inside a completion (0: none)."""
    scheduler_url: str | None = None
    """Where the run starts child runs (the scheduler's public URL)."""
    run_credential: str | None = None
    """The bearer credential of those child runs, as the run's caller."""
    input_content: str | None = None
    """The input itself, when small enough to travel inside the Job (``NEXUS__INPUT``)."""


_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def _arguments(template_args: list[str], values: dict[str, str]) -> list[str]:
    """The template's arguments with each placeholder filled, in one pass: a value is never
    read again for placeholders (an input URL the caller gave that holds ``{request-id}``,
    or text that a value completes into a placeholder, stays as it is)."""
    if not template_args:
        return [f"--sas-uri={values['{sas-uri}']}", f"--request-id={values['{request-id}']}"]
    return [_PLACEHOLDER.sub(lambda found: values[found.group()], arg) for arg in template_args]


def _literal(value: str) -> str:
    """``value`` as Kubernetes gives it back after its ``$(VAR)`` expansion of an env value
    or an argument: each ``$`` doubled (``$$`` reads as ``$``)."""
    return value.replace("$", "$$")


def _caller_literal(
    env: dict[str, str], overrides: ConfigurationOverrides | None
) -> dict[str, str]:
    """The applied ``env`` with the values a caller set (``customConfiguration.env``, of
    either API) made literal; the template's own values are the operator's and stay
    templates, free to reference the variables defined before them."""
    own = (overrides or {}).get("env")
    if not own:
        return env
    return {**env, **{e["name"]: _literal(env[e["name"]]) for e in own if e["name"] in env}}


def _exit_code_rule(container: str, operator: str, codes: list[int]) -> dict[str, Any]:
    values = sorted(set(codes))  # Kubernetes takes them ordered and each once
    return {
        "action": "FailJob",
        "onExitCodes": {"containerName": container, "operator": operator, "values": values},
    }


def build_job(
    run: Checkpoint,
    links: RunLinks,
    *,
    workgroup: Workgroup | None,
    ttl_after_finished: int,
    copy: int = 1,
) -> dict[str, Any]:
    """The Job object for ``run``; for a run started in several copies
    (``speculativeAttempts``), that of its ``copy``: named ``<id>-copy-<n>`` from the
    second on, its container still named after the request id."""
    config = run.applied_configuration
    name = str(run.id)
    copies = config.get("speculativeAttempts", 1)
    job = job_name(run.id, run.attempt)
    image = config["image"]
    if config.get("registry"):
        image = f"{config['registry']}/{image}"
    image = f"{image}:{config['versionTag']}"
    labels = {
        ALGORITHM_LABEL: run.algorithm,
        COMPONENT_LABEL: ALGORITHM_RUN,
        REQUEST_LABEL: name,
        ATTEMPT_LABEL: str(run.attempt),
    }
    env = {
        **_caller_literal(config.get("env", {}), run.configuration_overrides),
        "NEXUS__ALGORITHM_NAME": run.algorithm,
        "NEXUS__SHARD_NAME": config["shard"],
        "NEXUS__REQUEST_ID": name,
        "NEXUS__ATTEMPT": str(run.attempt),
        "NEXUS__RECEIVER_URL": links.receiver_url,
        "NEXUS__RUN_TOKEN": links.run_token,
        "NEXUS__RESULT_UPLOAD_URL": links.result_upload_url,
        # the same, as containers built on the v1.2 Python client read them
        "NEXUS__CRYSTAL_RECEIVER_URL": links.receiver_url,
        "CRYSTAL__ALGORITHM_NAME": run.algorithm,
    }
    if links.input_content is not None:
        # Kubernetes expands $(VAR) in an env value and reads $$ as $: with every $
        # doubled, the container reads the document as it was sent, never another
        # variable's value (a Secret's, the run token) spliced into it
        env["NEXUS__INPUT"] = _literal(links.input_content)
    else:  # never another input than the run's, whatever the template's env says
        env.pop("NEXUS__INPUT", None)
    if links.result_inline_limit:
        env["NEXUS__RESULT_INLINE_LIMIT"] = str(links.result_inline_limit)
    if links.scheduler_url and links.run_credential:
        env["NEXUS__SCHEDULER_URL"] = links.scheduler_url
        env["NEXUS__RUN_CREDENTIAL"] = links.run_credential
    if copies > 1:
        env["NEXUS__SPECULATIVE_COPY"] = f"{copy}/{copies}"
    if run.parent:
        # A label, not an owner reference: Kubernetes would delete the child's Job with
        # its parent's (finished, cancelled) while the child still runs. Cancelling a
        # parent cancels its children explicitly (nexus.scheduler.cancelling).
        labels[PARENT_LABEL] = run.parent["requestId"]
        env["NEXUS__PARENT_REQUEST_ID"] = run.parent["requestId"]
        env["NEXUS__PARENT_ALGORITHM_NAME"] = run.parent["algorithmName"]
    values = {"{sas-uri}": links.input_url, "{request-id}": name, "{algorithm-name}": run.algorithm}
    limits: dict[str, str] = {
        "cpu": config["cpuLimit"],
        "memory": config["memoryLimit"],
        **config.get("customResources", {}),
    }
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "args": _arguments(config.get("args") or [], values)
        + [_literal(arg) for arg in config.get("extraArgs", ())],
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {
            "limits": limits,
            "requests": {"cpu": config["cpuLimit"], "memory": config["memoryLimit"]},
        },
    }
    security = config.get("securityContext") or restricted_security_context()
    container["securityContext"] = security["container"]
    if config.get("command"):
        container["command"] = config["command"]
    if config.get("envFrom"):
        container["envFrom"] = config["envFrom"]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": security["pod"],
        "containers": [container],
    }
    mounted = config.get("configuration")
    if mounted:
        pod_spec["volumes"] = [
            {"name": CONFIGURATION_VOLUME, "configMap": {"name": mounted["configMap"]}}
        ]
        container["volumeMounts"] = [
            {"name": CONFIGURATION_VOLUME, "mountPath": mounted["mountPath"], "readOnly": True}
        ]
    if config.get("serviceAccountName"):
        pod_spec["serviceAccountName"] = config["serviceAccountName"]
    if workgroup is not None:
        if workgroup.tolerations:
            pod_spec["tolerations"] = workgroup.tolerations
        if workgroup.affinity:
            pod_spec["affinity"] = workgroup.affinity
    spec: dict[str, Any] = {
        "backoffLimit": config["maximumRetries"],
        "activeDeadlineSeconds": config["deadlineSeconds"],
        "ttlSecondsAfterFinished": ttl_after_finished,
        "template": {
            "metadata": {"labels": labels, "annotations": config.get("annotations") or {}},
            "spec": pod_spec,
        },
    }
    rules = []
    fatal = [code for code in config.get("fatalExitCodes") or () if code]  # 0 is success
    if fatal:
        rules.append(_exit_code_rule(name, "In", fatal))
    if config.get("transientExitCodes"):  # then only transient failures are retried
        rules.append(_exit_code_rule(name, "NotIn", config["transientExitCodes"]))
    if rules:
        # a pod evicted, preempted or on a node scaled away (exit 137 or 143) is not the
        # algorithm failing: it is started again, and does not use up a retry
        spec["podFailurePolicy"] = {"rules": [DISRUPTION_RULE, *rules]}
    metadata: dict[str, Any] = {
        "name": copy_name(job, copy),
        "labels": labels,
        "annotations": {SHARD_ANNOTATION: config["shard"]},
    }
    if copies > 1:
        metadata["annotations"][SPECULATIVE_ANNOTATION] = f"{copy}/{copies}"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def serialise(job: dict[str, Any]) -> bytes:
    return orjson.dumps(job)


_SLOT = "\ue000{}\ue001"
"""A per-run value's place in a body made once (private-use characters around its number)."""
_SLOTS = re.compile("\ue000([0-9])\ue001".encode())
_TEMPLATE_ID = uuid.uuid4()
"""The request id of the runs templates are made of (random: no template holds its text)."""
_ID, _INPUT_URL, _RESULT_URL, _TOKEN, _CREDENTIAL, _INPUT = range(6)


@record
class _Body:
    """A Job's JSON cut at its per-run values: ``pieces[i]`` comes before the value of
    slot ``slots[i]``, and the last piece after them all."""

    config: AppliedConfiguration
    workgroup: Workgroup | None
    pieces: list[bytes]
    slots: list[int]


class JobBodies:
    """The bodies of Jobs (:func:`serialise` of :func:`build_job`), byte for byte, each made
    from one made before for the same configuration: that one is cut where the run's own
    values go (its id, links, token, credential and input), and a run's body is its
    pieces joined with its values, each escaped as JSON escapes it inside a string.

    Runs dispatched together share one configuration object (``get_many(shared=True)``):
    a body then costs a join and a few escapes, not a Job built and serialised. A
    template is checked when it is made: the run it is made for must come out exactly as
    :func:`build_job` makes it, or runs of that configuration are built the plain way.
    Runs with a parent, several copies or their caller's own environment values are always
    built the plain way."""

    MAX_TEMPLATES = 256

    def __init__(self) -> None:
        self._bodies: dict[tuple[Any, ...], _Body | None] = {}

    @property
    def templates(self) -> int:
        """How many templates are in use (configurations built the plain way left out)."""
        return sum(body is not None for body in self._bodies.values())

    def body(
        self,
        run: Checkpoint,
        links: RunLinks,
        *,
        workgroup: Workgroup | None,
        ttl_after_finished: int,
        copy: int = 1,
    ) -> bytes:
        """The body of ``run``'s Job (of its copy ``copy``, built the plain way)."""
        config = run.applied_configuration
        overrides = run.configuration_overrides
        if (
            copy != 1
            or run.parent
            or config.get("speculativeAttempts", 1) != 1
            or (overrides or {}).get("env")
        ):
            return _plain(run, links, workgroup, ttl_after_finished, copy)
        credential = bool(links.scheduler_url and links.run_credential)
        key = (
            id(config), id(workgroup), run.algorithm, run.attempt, ttl_after_finished,
            links.receiver_url, links.scheduler_url, links.result_inline_limit,
            credential, links.input_content is not None,
        )  # fmt: skip
        dumps = orjson.dumps  # each value as it reads inside a JSON string (see _escaped)
        values = [
            str(run.id).encode(),
            dumps(links.input_url)[1:-1],
            dumps(links.result_upload_url)[1:-1],
            dumps(links.run_token)[1:-1],
            dumps(links.run_credential or "")[1:-1] if credential else b"",
            _escaped(_literal(links.input_content)) if links.input_content is not None else b"",
        ]
        made = self._bodies.get(key, ...)
        if made is ... or (
            made is not None and (made.config is not config or made.workgroup is not workgroup)
        ):
            made = self._make(run, links, workgroup, ttl_after_finished, values)
            if len(self._bodies) >= self.MAX_TEMPLATES:
                self._bodies.clear()
            self._bodies[key] = made
        if made is None:
            return _plain(run, links, workgroup, ttl_after_finished)
        return _joined(made, values)

    def _make(
        self,
        run: Checkpoint,
        links: RunLinks,
        workgroup: Workgroup | None,
        ttl_after_finished: int,
        values: list[bytes],
    ) -> _Body | None:
        """The template of ``run``'s configuration, or ``None`` if it would not give
        ``run``'s own body exactly."""
        slot = _SLOT.format
        template_links = replace(
            links,
            input_url=slot(_INPUT_URL),
            result_upload_url=slot(_RESULT_URL),
            run_token=slot(_TOKEN),
            run_credential=slot(_CREDENTIAL) if links.run_credential else links.run_credential,
            input_content=slot(_INPUT) if links.input_content is not None else None,
        )
        job = build_job(
            replace(run, id=_TEMPLATE_ID),
            template_links,
            workgroup=workgroup,
            ttl_after_finished=ttl_after_finished,
        )
        text = serialise(job).replace(str(_TEMPLATE_ID).encode(), slot(_ID).encode())
        parts = _SLOTS.split(text)
        made = _Body(
            run.applied_configuration,
            workgroup,
            parts[0::2],
            [int(number) for number in parts[1::2]],
        )
        expected = _plain(run, links, workgroup, ttl_after_finished)
        return made if _joined(made, values) == expected else None


def _plain(
    run: Checkpoint,
    links: RunLinks,
    workgroup: Workgroup | None,
    ttl_after_finished: int,
    copy: int = 1,
) -> bytes:
    """The body built and serialised whole: what a template must give, byte for byte."""
    return serialise(
        build_job(run, links, workgroup=workgroup, ttl_after_finished=ttl_after_finished, copy=copy)
    )


def _escaped(value: str) -> bytes:
    """``value`` as it reads inside a JSON string (as orjson writes it)."""
    return orjson.dumps(value)[1:-1]


def _joined(body: _Body, values: list[bytes]) -> bytes:
    pieces = body.pieces
    out = [pieces[0]]
    for piece, slot in zip(pieces[1:], body.slots, strict=True):
        out.append(values[slot])
        out.append(piece)
    return b"".join(out)
