"""The example catalog of a local system, installed in its controller cluster.

A workgroup per shard (and ``default``, on the first), the ``echo``, ``maybe-fail``,
``echo-stored`` and ``fan-out`` algorithms (:data:`EXAMPLES`), and the ConfigMap their
containers read their environment from. :func:`install_examples` installs them over the
cluster's API as a client would; installing again keeps what is there (409 is fine), so a
restarted cluster, which comes back empty, gets the same catalog.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from nexus_dev.cluster.certificates import trusting
from nexus_dev.servers.supervision import LocalServiceError

GROUP = "science.sneaksanddata.com"
EXAMPLES = ("echo", "maybe-fail", "echo-stored", "fan-out")
"""``echo-stored`` is ``echo`` with its inputs kept in S3 instead of with the checkpoint."""


def install_examples(controller: dict[str, Any], shards: list[str], *, inline: bool) -> None:
    """The example catalog, in the controller cluster (whose ``url`` and ``kubeconfig`` are
    given): a workgroup per shard and ``default`` (on the first), the ConfigMap, and the
    :data:`EXAMPLES` (``inline``: whether their inputs stay with the checkpoint)."""
    config = yaml.safe_load(Path(controller["kubeconfig"]).read_text())
    token = config["users"][0]["user"]["token"]
    authority = config["clusters"][0]["cluster"].get("certificate-authority-data")
    trust = None if authority is None else trusting(authority)

    def create(plural: str, obj: dict[str, Any]) -> None:
        _create(controller["url"], token, plural, obj, trust)

    for shard in shards:
        create("nexusalgorithmworkgroups", example_workgroup(shard, shard))
    create("nexusalgorithmworkgroups", example_workgroup("default", shards[0]))
    create("configmaps", example_config_map())
    for name in EXAMPLES:
        create(
            "nexusalgorithmtemplates",
            example_template(name, inline=inline and name != "echo-stored"),
        )


def example_workgroup(name: str, shard: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "NexusAlgorithmWorkgroup",
        "metadata": {"name": name},
        "spec": {"description": f"local machines of {shard}", "cluster": shard},
    }


EXAMPLE_CONFIG_MAP = "nexus-examples"


def example_config_map() -> dict[str, Any]:
    """Environment the example algorithms get (``envFrom``), copied to every shard."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": EXAMPLE_CONFIG_MAP},
        "data": {"NEXUS_EXAMPLE_GREETING": "hello from the controller cluster"},
    }


def example_template(name: str, *, inline: bool = True) -> dict[str, Any]:
    """``echo`` returns its input; ``maybe-fail`` also fails, exits or sleeps on request;
    ``fan-out`` runs another algorithm on each of its inputs as child runs."""
    program = name if name in ("maybe-fail", "fan-out") else "echo"
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "NexusAlgorithmTemplate",
        "metadata": {"name": name},
        "spec": {
            "container": {"image": "nexus", "registry": "local", "versionTag": "dev"},
            "computeResources": {"cpuLimit": "500m", "memoryLimit": "256Mi"},
            "workgroupRef": {"name": "default", "group": GROUP, "kind": "NexusAlgorithmWorkgroup"},
            "command": ["python", "-m", "nexus_sdk.examples", program],
            "args": ["--sas-uri={sas-uri}", "--request-id={request-id}"],
            "runtimeEnvironment": {
                "deadlineSeconds": 600,
                "maximumRetries": 0,
                "mappedEnvironmentVariables": [{"configMapRef": {"name": EXAMPLE_CONFIG_MAP}}],
            },
            "errorHandlingBehaviour": {"transientExitCodes": [], "fatalExitCodes": []},
            "payloadConfiguration": {"payloadValidFor": "24h", "inline": inline},
        },
    }


def _create(
    url: str, token: str, plural: str, obj: dict[str, Any], trust: ssl.SSLContext | None
) -> None:
    prefix = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{GROUP}/v1"
    request = urllib.request.Request(
        f"{url}{prefix}/namespaces/nexus/{plural}",
        data=json.dumps(obj).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=trust):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise LocalServiceError(
                f"cannot install {plural}/{obj['metadata']['name']}: {exc}"
            ) from exc
