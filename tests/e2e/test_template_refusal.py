"""Templates and overrides that cannot run are refused where they enter, on the real system.

A template Kubernetes would refuse gets a ``Ready: False`` condition on the resource saying
why (through the status subresource of the local cluster), and its runs a 400 naming the
problem, storing nothing; fixed, it runs. A request may run another image than its
template's only from the template's ``container.allowedImages``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from harness import Servers
from support.system import GROUP, System, local_system, template

from nexus_dev.cluster.emulators import ShardSpec

RUN = "/algorithm/v1.2/run/{}"
TEMPLATES = f"{GROUP}/nexusalgorithmtemplates"


def _container(**changes: Any) -> dict[str, Any]:
    return {"image": "algorithms/echo", "registry": "example.io", "versionTag": "1.0", **changes}


async def _resource(system: System, name: str) -> dict[str, Any]:
    shard = system.cluster["shard-0"]
    async with system.session.get(
        f"{shard.url}{TEMPLATES}/{name}", headers={"Authorization": f"Bearer {shard.token}"}
    ) as response:
        assert response.status == 200
        return dict(await response.json())


async def _ready(system: System, name: str, status: str) -> dict[str, Any]:
    """The template's Ready condition, once it says ``status`` (within 10 s)."""
    async with asyncio.timeout(10):
        while True:
            found = (await _resource(system, name)).get("status") or {}
            ready = [c for c in found.get("conditions") or () if c.get("type") == "Ready"]
            if ready and ready[0]["status"] == status:
                return dict(ready[0])
            await asyncio.sleep(0.05)


async def _refused(
    system: System, algorithm: str, body: dict[str, Any], status: int, code: str, *names: str
) -> None:
    before = await system.stored()
    answer, error, _ = await system.call("POST", RUN.format(algorithm), json=body)
    assert (answer, error.get("error")) == (status, code), (algorithm, body, answer, error)
    for name in names:
        assert name in error["message"], (name, error)
    assert await system.stored() == before


async def test_a_template_kubernetes_would_refuse_is_marked_and_its_runs_refused(
    servers: Servers,
) -> None:
    broken = template("broken", computeResources={"cpuLimit": "lots", "memoryLimit": "1Gi"})
    bad_image = template("bad-image", container=_container(image="Algorithms/Echo"))
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo"), broken, bad_image],
    ) as system:
        condition = await _ready(system, "broken", "False")
        assert condition["reason"] == "InvalidTemplate"
        assert "spec.computeResources.cpuLimit" in condition["message"]
        assert "'lots'" in condition["message"]
        assert condition["observedGeneration"] == 1
        assert "container.image" in (await _ready(system, "bad-image", "False"))["message"]
        assert (await _ready(system, "echo", "True"))["reason"] == "Valid"

        body = {"algorithmParameters": {}}
        await _refused(system, "broken", body, 400, "invalid_template", "cpuLimit", "'lots'")
        await _refused(system, "bad-image", body, 400, "invalid_template", "Algorithms/Echo")
        await _refused(system, "nosuch", body, 404, "unknown_algorithm")

        # fixed, it runs; a write of the object keeps its status (the subresource's alone)
        shard = system.cluster["shard-0"]
        fixed = await _resource(system, "broken")
        fixed["spec"]["computeResources"]["cpuLimit"] = "2"
        fixed["status"] = {"conditions": []}  # ignored: not written through …/status
        async with system.session.put(
            f"{shard.url}{TEMPLATES}/broken",
            json=fixed,
            headers={"Authorization": f"Bearer {shard.token}"},
        ) as response:
            assert response.status == 200, await response.text()
            assert (await response.json())["status"]["conditions"][0]["status"] == "False"
        condition = await _ready(system, "broken", "True")
        assert condition["observedGeneration"] == 2
        async with asyncio.timeout(10):  # the scheduler's watch brings the change
            while True:
                answer, _, _ = await system.call("POST", RUN.format("broken"), json=body)
                if answer == 202:
                    break
                assert answer == 400
                await asyncio.sleep(0.05)


async def test_a_request_runs_another_image_only_from_its_templates_allowed_images(
    servers: Servers,
) -> None:
    allowing = template(
        "allowing",
        container=_container(allowedImages=["example.io/team/*", "ghcr.io/org/tool"]),
    )
    async with local_system(
        servers,
        shards=[ShardSpec(name="shard-0", mode="off")],
        templates=[template("echo"), allowing],
    ) as system:

        def run(**configuration: Any) -> dict[str, Any]:
            return {"algorithmParameters": {}, "customConfiguration": configuration}

        # any image at all, with the template's service account and Secrets: refused
        for configuration, field, image in (
            ({"imageRepository": "evil/miner"}, "customConfiguration.image", "example.io/evil/miner"),
            ({"registry": "docker.io"}, "customConfiguration.registry", "docker.io/algorithms/echo"),
            ({"image": "team/x"}, "customConfiguration.image", "example.io/team/x"),
        ):  # fmt: skip
            await _refused(system, "echo", run(**configuration), 403, "forbidden", field, image)
        # its own image in another version is its own
        await system.submit("echo", run(imageTag="2.0"))
        # a template's list lets those it names through, and only those
        await system.submit("allowing", run(image="team/x"))
        await system.submit("allowing", run(registry="ghcr.io", image="org/tool", imageTag="3"))
        for configuration in ({"image": "teammate/x"}, {"registry": "ghcr.io", "image": "org/x"}):
            await _refused(
                system, "allowing", run(**configuration), 403, "forbidden", "allowedImages"
            )
