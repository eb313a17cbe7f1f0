"""Benchmark of the local cluster, driven the way Nexus drives a shard: kubernetes-asyncio.

Each figure runs against a ``nexus devcluster`` started as a separate process (client and
server each get a core) and prints the command that reproduces it:

(a) Job creates per second, unthrottled, with ``--inflight`` calls in flight
    (``BatchV1Api.create_namespaced_job`` with ``_preload_content=False`` and a client
    session without ``trust_env``), kubelet ``off`` and, separately, ``simulated``;
(b) achieved create rate and share of ``429`` answers against a limit of 100 creates/s;
(c) emulator RSS after ``--memory-jobs`` Jobs ran to completion in simulated mode, with
    ``ttlSecondsAfterFinished: 0`` and (unless ``--skip-no-ttl``) without a TTL;
(d) simulated pod lifecycles per second with the full algorithm contract (input GET,
    result PUT, completion POST against a stub server in a third process) and emulator CPU
    seconds per pod.

Human-readable lines first, then one JSON line with every figure. Defaults finish in
about two minutes; ``--scale 0.1`` gives a quick smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

NS = "nexus"
PYTHON = sys.executable
STUB_SERVER = """
import asyncio, sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.Response(body=b'{"input": true}' if request.method == "GET" else b"")
async def main():
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
import uvloop; uvloop.run(main())
"""


@dataclass
class Emulator:
    process: asyncio.subprocess.Process
    url: str
    kubeconfig: str
    command: str

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


@asynccontextmanager
async def emulator(*options: str) -> AsyncIterator[Emulator]:
    """A ``nexus devcluster`` process with one shard ``bench``; stopped with SIGTERM."""
    directory = tempfile.mkdtemp(prefix="devcluster-bench-")
    argv = [
        "-m",
        "nexus",
        "devcluster",
        "--shard",
        "bench",
        "--kubeconfig-dir",
        directory,
        "--log-level",
        "WARNING",
        *options,
    ]
    process = await asyncio.create_subprocess_exec(PYTHON, *argv, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line.startswith("DEVCLUSTER READY "):
            raise RuntimeError(f"devcluster did not start: {line!r}")
        shard = json.loads(line.split(" ", 2)[2])["bench"]
        shown = " ".join(a for a in options)
        yield Emulator(
            process,
            shard["url"],
            shard["kubeconfig"],
            f"nexus devcluster --shard bench {shown}".strip(),
        )
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def fast_client(kubeconfig: str, inflight: int) -> client.ApiClient:
    """A kubernetes-asyncio client for the hot path: its session without ``trust_env``.

    kubernetes-asyncio builds its ``aiohttp.ClientSession`` with ``trust_env=True``, which
    looks up proxy settings and ``.netrc`` on every request and halves throughput. The
    session is public (``rest_client.pool_manager``), so it is replaced by an equivalent
    one without it rather than patching the library.
    """
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = inflight
    api = client.ApiClient(configuration)
    rest = api.rest_client
    previous = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=inflight), trust_env=False, read_bufsize=2**21
    )
    await previous.close()
    return api


def manifest(name: str, **spec: Any) -> dict[str, Any]:
    env = spec.pop("env", None)
    container: dict[str, Any] = {"name": "main", "image": "algorithms/bench:1.0"}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
        container["args"] = spec.pop("args")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
            **spec,
        },
    }


async def create_many(
    api: client.ApiClient,
    count: int,
    inflight: int,
    prefix: str,
    *,
    duration: float | None = None,
    **spec: Any,
) -> tuple[int, int, float]:
    """Create ``count`` Jobs (or for ``duration`` s); ``(created, throttled, seconds)``."""
    batch = client.BatchV1Api(api)
    created = throttled = 0
    next_index = 0
    started = time.perf_counter()
    stop_at = started + duration if duration else float("inf")

    async def worker() -> None:
        nonlocal created, throttled, next_index
        while next_index < count and time.perf_counter() < stop_at:
            index = next_index
            next_index += 1
            body = manifest(f"{prefix}-{index}", **spec)
            response = await batch.create_namespaced_job(NS, body, _preload_content=False)
            await response.read()
            if response.status == 201:
                created += 1
            elif response.status == 429:
                throttled += 1
            else:
                raise RuntimeError(f"create answered {response.status}: {await response.text()}")

    await asyncio.gather(*(worker() for _ in range(inflight)))
    return created, throttled, time.perf_counter() - started


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def wait_metric(url: str, name: str, done: Any, timeout: float) -> float:
    async with aiohttp.ClientSession() as session:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            value = await metric(session, url, name)
            if done(value):
                return value
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{name} did not reach its target in {timeout} s")


async def figure_a(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    count = int(args.create_jobs * args.scale)
    async with (
        emulator("--mode", mode, "--duration", "fixed:0.01") as emu,
        await fast_client(emu.kubeconfig, args.inflight) as api,
    ):
        created, _, seconds = await create_many(api, count, args.inflight, "a")
    rate = created / seconds
    print(
        f"(a) {rate:,.0f} creates/s unthrottled, kubelet {mode} ({created} Jobs, "
        f"{args.inflight} in flight)  [{emu.command}]"
    )
    return {
        "creates_per_second": round(rate),
        "jobs": created,
        "kubelet": mode,
        "command": emu.command,
    }


async def figure_b(args: argparse.Namespace) -> dict[str, Any]:
    async with (
        emulator("--mode", "off", "--mutating-rate", "100") as emu,
        await fast_client(emu.kubeconfig, args.inflight) as api,
    ):
        created, throttled, seconds = await create_many(
            api, 10**9, args.inflight, "b", duration=args.throttle_seconds
        )
    share = throttled / max(1, created + throttled)
    print(
        f"(b) limit 100/s: {created / seconds:,.1f} creates/s accepted, {share:.1%} of "
        f"{created + throttled} answers were 429  [{emu.command}]"
    )
    return {
        "accepted_per_second": round(created / seconds, 1),
        "share_429": round(share, 4),
        "answers": created + throttled,
        "command": emu.command,
    }


async def figure_c(args: argparse.Namespace, ttl: bool) -> dict[str, Any]:
    count = int(args.memory_jobs * args.scale)
    spec = {"ttlSecondsAfterFinished": 0} if ttl else {}
    async with emulator("--mode", "simulated", "--duration", "fixed:0.01") as emu:
        async with await fast_client(emu.kubeconfig, args.inflight) as api:
            await create_many(api, count, args.inflight, "c", **spec)
        await wait_metric(emu.url, "devcluster_containers_terminated", lambda v: v >= count, 300)
        if ttl:
            await wait_metric(emu.url, 'devcluster_objects{resource="jobs"}', lambda v: v == 0, 60)
        await asyncio.sleep(1.0)
        rss = emu.rss_mib()
    label = "with ttlSecondsAfterFinished=0" if ttl else "without TTL (all kept)"
    print(f"(c) RSS {rss:,.0f} MiB after {count:,} Jobs completed, {label}  [{emu.command}]")
    return {"rss_mib": round(rss), "jobs": count, "ttl": ttl, "command": emu.command}


async def figure_d(args: argparse.Namespace) -> dict[str, Any]:
    count = int(args.lifecycle_jobs * args.scale)
    stub = await asyncio.create_subprocess_exec(
        PYTHON, "-c", STUB_SERVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert stub.stdout is not None
        base = f"http://127.0.0.1:{int(await stub.stdout.readline())}"
        async with emulator("--mode", "simulated", "--duration", "fixed:0.01") as emu:
            async with await fast_client(emu.kubeconfig, args.inflight) as api:
                cpu_before = emu.cpu_seconds()
                started = time.perf_counter()
                env = {
                    "NEXUS__RECEIVER_URL": base,
                    "NEXUS__RUN_TOKEN": "t",
                    "NEXUS__RESULT_UPLOAD_URL": f"{base}/results/x",
                    "NEXUS__ALGORITHM_NAME": "bench",
                    "NEXUS__REQUEST_ID": "x",
                }
                args_list = [f"--sas-uri={base}/inputs/x", "--request-id=x"]
                await create_many(
                    api,
                    count,
                    args.inflight,
                    "d",
                    env=env,
                    args=args_list,
                    ttlSecondsAfterFinished=0,
                )
            await wait_metric(
                emu.url,
                'devcluster_containers_terminated{reason="Completed"}',
                lambda v: v >= count,
                300,
            )
            seconds = time.perf_counter() - started
            cpu = emu.cpu_seconds() - cpu_before
    finally:
        stub.terminate()
        await stub.wait()
    rate = count / seconds
    print(
        f"(d) {rate:,.0f} simulated pod lifecycles/s (create → contract → Complete), "
        f"{cpu / count * 1000:.2f} ms emulator CPU per pod ({count:,} pods)  [{emu.command}]"
    )
    return {
        "lifecycles_per_second": round(rate),
        "cpu_ms_per_pod": round(cpu / count * 1000, 3),
        "pods": count,
        "command": emu.command,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    figures["a_off"] = await figure_a(args, "off")
    figures["a_simulated"] = await figure_a(args, "simulated")
    figures["b"] = await figure_b(args)
    figures["c_ttl"] = await figure_c(args, ttl=True)
    if not args.skip_no_ttl:
        figures["c_no_ttl"] = await figure_c(args, ttl=False)
    figures["d"] = await figure_d(args)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inflight", type=int, default=32, help="create calls in flight")
    parser.add_argument("--create-jobs", type=int, default=20_000, help="Jobs for (a)")
    parser.add_argument("--throttle-seconds", type=float, default=5.0, help="duration of (b)")
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="Jobs for (c)")
    parser.add_argument("--lifecycle-jobs", type=int, default=20_000, help="pods for (d)")
    parser.add_argument("--skip-no-ttl", action="store_true", help="skip (c) without TTL")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    figures = asyncio.run(main(parser.parse_args()))
    print(json.dumps(figures))
