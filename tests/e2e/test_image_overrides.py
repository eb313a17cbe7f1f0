"""The image allow-list holds whichever way a request names an image: v1.2 fields in any
letter case and under every alias, a bulk submit's items, Go v1's
``customConfiguration.container`` and its dry runs — each is refused (403) naming the
image, and nothing is stored."""

from __future__ import annotations

from typing import Any

from harness import Servers
from support.system import local_system, template

from nexus_dev.cluster.emulators import ShardSpec


def _echo() -> dict[str, Any]:
    echo = template("echo")
    echo["spec"]["container"] = {
        "image": "algorithms/echo", "registry": "example.io", "versionTag": "1.0",
        "allowedImages": ["example.io/team/*"],
    }  # fmt: skip
    return echo


async def test_no_route_runs_an_image_the_template_does_not_allow(servers: Servers) -> None:
    async with local_system(
        servers, shards=[ShardSpec(name="shard-0", mode="off")], templates=[_echo()]
    ) as system:
        v12 = (
            {"imageRepository": "evil/miner"},
            {"ImageRepository": "evil/miner"},
            {"IMAGE": "evil/miner"},
            {"imageRegistry": "docker.io"},
            {"Registry": "docker.io", "imageTag": "1.0"},
            {"image": "team-evil/x"},  # a prefix of the allowed path, not below it
        )
        requests: list[tuple[str, dict[str, Any]]] = [
            ("/algorithm/v1.2/run/echo", {"algorithmParameters": {}, "customConfiguration": c})
            for c in v12
        ]
        for container in ({"image": "evil/miner"}, {"registry": "docker.io"}):
            go = {"algorithmParameters": {}, "customConfiguration": {"container": container}}
            requests += [("/algorithm/v1/run/echo", go), ("/algorithm/v1/run/echo?dryRun=true", go)]
        before = await system.stored()
        for path, body in requests:
            status, answer, _ = await system.call("POST", path, json=body)
            assert (status, answer.get("error")) == (403, "forbidden"), (path, body, answer)
            assert "allowedImages" in answer["message"], answer
        status, answer, _ = await system.call(
            "POST",
            "/algorithm/v1.2/runs/echo",
            json={"runs": [{"algorithmParameters": {}, "customConfiguration": c} for c in v12]},
        )
        assert status == 200, answer
        assert [a.get("error") for a in answer["runs"]] == ["forbidden"] * len(v12), answer
        assert await system.stored() == before
        # what the list allows runs
        await system.submit(
            "echo", {"algorithmParameters": {}, "customConfiguration": {"Image": "team/x"}}
        )
