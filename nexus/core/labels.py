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
"""The run's request id (also the Job's and the container's name)."""
SHARD_ANNOTATION = "science.sneaksanddata.com/shard"
"""The shard a Job was created for."""
ALGORITHM_RUN = "algorithm-run"

ALGORITHM_RUN_SELECTOR = f"{COMPONENT_LABEL}={ALGORITHM_RUN}"
"""Label selector matching every algorithm Job and pod."""

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
"""Set by Kubernetes on the pods of a Job: the Job's name."""
