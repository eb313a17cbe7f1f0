"""Names Nexus writes on Kubernetes objects and reads back from them (DESIGN §3).

The scheduler labels every Job and pod it creates; the maintainer finds them again by the
same labels, so both import the names from here rather than from each other.
"""

from __future__ import annotations

ALGORITHM_LABEL = "science.sneaksanddata.com/algorithm-template-name"
"""The algorithm (template) a run executes."""
COMPONENT_LABEL = "science.sneaksanddata.com/nexus-component"
"""Which part of Nexus an object belongs to; algorithm Jobs and pods carry ``ALGORITHM_RUN``."""
REQUEST_LABEL = "science.sneaksanddata.com/request-id"
"""The run's request id (also the container's name, and the Job's for its first attempt)."""
PARENT_LABEL = "science.sneaksanddata.com/parent-request-id"
"""On the Job and pods of a child run: its parent's request id (``kubectl get jobs -l``)."""
ATTEMPT_LABEL = "science.sneaksanddata.com/attempt"
"""The run's attempt the Job is (1, 2, …; see :mod:`nexus.core.retrying`)."""
SHARD_ANNOTATION = "science.sneaksanddata.com/shard"
"""The shard a Job was created for."""
ALGORITHM_RUN = "algorithm-run"

ALGORITHM_RUN_SELECTOR = f"{COMPONENT_LABEL}={ALGORITHM_RUN}"
"""Label selector matching every algorithm Job and pod."""

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""Set by Kubernetes on the pods of a Job: the Job's name."""

CONTRACT_ENV = frozenset(
    {
        "NEXUS__ALGORITHM_NAME", "NEXUS__SHARD_NAME", "NEXUS__REQUEST_ID",
        "NEXUS__RECEIVER_URL", "NEXUS__RUN_TOKEN", "NEXUS__RESULT_UPLOAD_URL",
        "NEXUS__RESULT_INLINE_LIMIT", "NEXUS__PARENT_REQUEST_ID",
        "NEXUS__PARENT_ALGORITHM_NAME", "NEXUS__SPECULATIVE_COPY", "NEXUS__ATTEMPT",
        "NEXUS__CRYSTAL_RECEIVER_URL", "CRYSTAL__ALGORITHM_NAME", "NEXUS__SCHEDULER_URL",
        "NEXUS__RUN_CREDENTIAL", "NEXUS__INPUT",
    }
)  # fmt: skip
"""The environment variables Nexus sets in an algorithm's container (DESIGN §3): a
request's ``customConfiguration.env`` cannot set them. ``NEXUS__CRYSTAL_RECEIVER_URL`` and
``CRYSTAL__ALGORITHM_NAME`` are the receiver and the algorithm under the names containers
built on the v1.2 Python client read."""

SPECULATIVE_ANNOTATION = "science.sneaksanddata.com/speculative-copy"
"""On each Job of a run started in several copies (``customConfiguration.
speculativeAttempts``): ``"<copy>/<copies>"``, the first copy being the Job named after the
request id."""


def copy_name(request_id: str, copy: int) -> str:
    """The Job name of a run's ``copy`` (1: the request id itself)."""
    return request_id if copy == 1 else f"{request_id}-copy-{copy}"


def copy_names(request_id: str, copies: int) -> list[str]:
    """The Job names of every copy of a run started in ``copies`` copies."""
    return [copy_name(request_id, copy) for copy in range(1, max(copies, 1) + 1)]


def speculative_copy(annotations: dict[str, str] | None) -> tuple[int, int] | None:
    """(copy, copies) of a Job's :data:`SPECULATIVE_ANNOTATION`, or ``None``."""
    text = (annotations or {}).get(SPECULATIVE_ANNOTATION)
    if not text:
        return None
    copy, _, copies = text.partition("/")
    if not (copy.isdigit() and copies.isdigit()) or not 1 <= int(copy) <= int(copies):
        return None
    return int(copy), int(copies)
