"""Several shards in one process, and the `nexus devcluster` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client

from nexus_dev.cluster.emulators import DevCluster
from nexus_dev.cluster.fairness import Limits

from .conftest import NS, connect, fast_spec, finished_job, job_manifest


async def test_shards_have_separate_state_and_kubeconfigs(tmp_path: Path) -> None:
    specs = [fast_spec("east"), fast_spec("west", mode="off", limits=Limits(mutating_rate=100))]
    async with DevCluster(specs, tmp_path) as cluster:
        east, west = cluster["east"], cluster["west"]
        assert east.url != west.url
        assert east.token != west.token
        config = yaml.safe_load((tmp_path / "west.kubeconfig").read_text())
        assert config["clusters"][0]["cluster"]["server"] == west.url
        assert config["contexts"][0]["context"]["namespace"] == NS
        assert config["users"][0]["user"]["token"] == west.token
        async with await connect(east) as east_api, await connect(west) as west_api:
            east_batch, west_batch = client.BatchV1Api(east_api), client.BatchV1Api(west_api)
            await east_batch.create_namespaced_job(NS, job_manifest("only-east"))
            await finished_job(east_batch, "only-east")
            assert not (await west_batch.list_namespaced_job(NS)).items
            await west_batch.create_namespaced_job(NS, job_manifest("only-west"))
            await asyncio.sleep(0.05)
            pods = (await client.CoreV1Api(west_api).list_namespaced_pod(NS)).items
            assert [p.status.phase for p in pods] == ["Pending"]  # kubelet off
        assert cluster.describe()["west"]["mode"] == "off"


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError):
                pass
    return found


async def test_cli_ready_line_and_clean_exit(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus",
        "devcluster",
        "--shard",
        "a:mode=process",
        "--shard",
        "b:mutating-rate=50;faults=oom=0.5",
        "--kubeconfig-dir",
        str(tmp_path),
        "--log-level",
        "WARNING",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("DEVCLUSTER READY "), line
        ready = json.loads(line[len("DEVCLUSTER READY ") :])
        assert set(ready) == {"a", "b"}
        assert ready["a"]["mode"] == "process"
        assert Path(ready["b"]["kubeconfig"]) == tmp_path / "b.kubeconfig"
        shard = type("S", (), {"kubeconfig": Path(ready["a"]["kubeconfig"])})
        async with await connect(shard) as api:  # type: ignore[arg-type]
            batch = client.BatchV1Api(api)
            script = "import time; time.sleep(60)"
            await batch.create_namespaced_job(
                NS, job_manifest("sleeper", command=["python", "-c", script])
            )

            async def running() -> bool:
                return bool(_children(process.pid))

            for _ in range(250):
                if await running():
                    break
                await asyncio.sleep(0.02)
            assert _children(process.pid), "the container process should be running"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert not _children(process.pid)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_cli_help_documents_every_option() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus", "devcluster", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0
    for option in (
        "--shards",
        "--shard",
        "--port",
        "--kubeconfig-dir",
        "--mode",
        "--mutating-rate",
        "--mutating-inflight",
        "--read-rate",
        "--duration",
        "--faults",
        "--event-ttl",
        "--history-size",
        "--log-level",
        "--bookmark-interval",
    ):
        assert option in text


def _authority(kubeconfig: Path) -> str:
    return str(
        yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
    )


async def test_https_by_default_and_plain_http_when_asked(tmp_path: Path) -> None:
    async with DevCluster([fast_spec("tls"), fast_spec("plain", tls=False)], tmp_path) as cluster:
        assert cluster["tls"].url.startswith("https://127.0.0.1:")
        assert cluster["plain"].url.startswith("http://127.0.0.1:")
        assert (
            "certificate-authority-data"
            not in yaml.safe_load(cluster["plain"].kubeconfig.read_text())["clusters"][0]["cluster"]
        )
        for shard in (cluster["tls"], cluster["plain"]):
            async with await connect(shard) as api:  # kubernetes-asyncio, from the kubeconfig
                assert (await client.VersionApi(api).get_code()).git_version == "v1.33.0"
        # a client that does not trust the authority is refused, as by any TLS server
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"{cluster['tls'].url}/healthz")


async def test_a_cluster_started_again_in_its_directory_keeps_its_authority(
    tmp_path: Path,
) -> None:
    """``nexus dev`` restarts a crashed cluster in the same directory, with its ports and
    tokens: the services that read the kubeconfig before must keep trusting it."""
    async with DevCluster([fast_spec("a")], tmp_path) as first:
        authority = _authority(first["a"].kubeconfig)
        trusted = first["a"].ssl_context
    assert stat.S_IMODE((tmp_path / "authority.pem").stat().st_mode) == 0o600
    async with DevCluster([fast_spec("a")], tmp_path) as second:
        assert _authority(second["a"].kubeconfig) == authority
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session,
            session.get(f"{second['a'].url}/healthz") as answer,
        ):
            assert answer.status == 200
    async with DevCluster([fast_spec("a")], tmp_path / "elsewhere") as third:
        assert _authority(third["a"].kubeconfig) != authority
