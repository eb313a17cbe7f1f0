"""A small inline input travels inside its Job (``NEXUS__INPUT``); the others are fetched.

Through the real scheduler, PostgreSQL, Redis, SeaweedFS and the local cluster, with the
simulated pods and with the algorithm SDK in a real process: a run whose input fits
``job_input_limit`` is read from its Job, with no request to the scheduler's input link; a
larger inline input, and an input in object storage, are fetched from the input URL the
Job names, as before. Every Job keeps naming its input URL, for containers that do not
know the variable.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from harness import Servers
from prometheus_client import REGISTRY
from support.system import local_system, template

from nexus_dev.cluster.emulators import ShardSpec
from nexus_dev.cluster.store import Change

CONTENT_ROUTE = "/algorithm/v1.2/payload/{algorithm}/requests/{request_id}/content"


def input_fetches() -> float:
    """Inline inputs the scheduler served from their signed links (shared by every test of
    the process: compare values taken before and after)."""
    labels = {"route": CONTENT_ROUTE, "method": "GET", "status": "200"}
    return REGISTRY.get_sample_value("nexus_http_request_duration_seconds_count", labels) or 0.0


@pytest.mark.parametrize("mode", ["simulated", "process"])  # process: the algorithm SDK
async def test_a_small_input_is_read_from_its_job_and_larger_ones_from_their_links(
    servers: Servers, mode: str
) -> None:
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode=mode)],  # type: ignore[arg-type]
        templates=[template("echo"), template("stored", inline=False)],
        section={"job_input_limit": 100},
    ) as system:
        jobs: dict[str, dict[str, Any]] = {}

        def added(change: Change) -> None:
            if change.type == "ADDED":
                jobs[change.obj["metadata"]["name"]] = dict(change.obj)

        system.cluster["shard-0"].store.subscribe("jobs", added)
        # Kubernetes expands $(VAR) and $$ in env values: the input must arrive as sent
        small = {"x": 1, "text": "héllo", "dollars": "$$5 $(NEXUS__RUN_TOKEN) $("}
        larger = {"text": "y" * 200}  # inline, over the 100 bytes a Job carries here
        fetched = input_fetches()
        small_id = await system.submit("echo", {"algorithmParameters": small})
        larger_id = await system.submit("echo", {"algorithmParameters": larger})
        stored_id = await system.submit("stored", {"algorithmParameters": small})
        for algorithm, request_id, parameters in (
            ("echo", small_id, small),
            ("echo", larger_id, larger),
            ("stored", stored_id, small),
        ):
            answer = await system.wait_for(algorithm, request_id)
            assert answer["status"] == "COMPLETED", (request_id, answer)
            async with system.session.get(answer["resultUri"]) as response:
                assert await response.json() == parameters

        def container(request_id: str) -> dict[str, Any]:
            return dict(jobs[request_id]["spec"]["template"]["spec"]["containers"][0])

        def env(request_id: str) -> dict[str, str]:
            return {e["name"]: e["value"] for e in container(request_id)["env"] if "value" in e}

        assert orjson.loads(env(small_id)["NEXUS__INPUT"].replace("$$", "$")) == small
        assert "NEXUS__INPUT" not in env(larger_id)
        assert "NEXUS__INPUT" not in env(stored_id)
        for request_id in (small_id, larger_id, stored_id):  # a link for every container
            assert any(a.startswith("--sas-uri=http") for a in container(request_id)["args"])
        assert input_fetches() - fetched == 1  # the larger inline input alone
