"""Benchmark of the local cluster, driven the way Nexus drives a shard: kubernetes-asyncio.

Each figure runs against its own ``nexus devcluster`` process (client, emulator and the
stub servers share the machine's cores, as in the end-to-end benchmarks) and can be
reproduced alone with ``--only``::

    .venv/bin/python benchmarks/devcluster_create.py                 # all, < 3 minutes
    .venv/bin/python benchmarks/devcluster_create.py --only a_simulated
    .venv/bin/python benchmarks/devcluster_create.py --only d --devcluster-option=--no-events

(a) Job creates per second, unthrottled, ``--inflight`` calls in flight
    (``BatchV1Api.create_namespaced_job`` with ``_preload_content=False`` and a client
    session without ``trust_env``), kubelet ``off`` and, separately, ``simulated`` (pods
    run and complete, no TTL: objects accumulate); the rate of the first and of the last
    quarter of the Jobs shows whether a growing store slows the server down;
(b) achieved create rate and share of ``429`` answers against a limit of 100 creates/s;
(c) emulator RSS after ``--memory-jobs`` Jobs ran to completion in simulated mode, with
    ``ttlSecondsAfterFinished: 0`` and (unless ``--skip-no-ttl``) without a TTL;
(d) simulated pod lifecycles per second with the full algorithm contract (input GET,
    result PUT, completion POST against a stub server in a separate process) and
    ``ttlSecondsAfterFinished: 0``: overall, slowest and fastest quarter, and emulator CPU
    (user + system) per pod, HTTP calls included — and, for scale, the CPU per pod of the
    creating client and of the stub servers, which share the same cores;
(e) the same with the watches Nexus's maintainer keeps open on a shard (Jobs and pods by
    label, all Events), read by a separate process.

CPU per pod varies by a fifth or more with whatever else runs on the machine (other work
on the sibling core slows every process), so the load average before and after is part of
the results. Human-readable lines first, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

NS = "nexus"
PYTHON = sys.executable
SCRIPT = "benchmarks/devcluster_create.py"
LABEL = "science.sneaksanddata.com/nexus-component"
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
WATCHERS = """
import asyncio, sys
import aiohttp
base, token, selector = sys.argv[1:4]
query = "watch=true&allowWatchBookmarks=true&resourceVersion=1&timeoutSeconds=600"
paths = [
    f"/apis/batch/v1/namespaces/nexus/jobs?labelSelector={selector}&{query}",
    f"/api/v1/namespaces/nexus/pods?labelSelector={selector}&{query}",
    f"/api/v1/namespaces/nexus/events?{query}",
]
async def main():
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        responses = [await session.get(base + path) for path in paths]
        assert all(r.status == 200 for r in responses), [r.status for r in responses]
        print("watching", flush=True)
        async def drain(response):
            async for _ in response.content.iter_any():
                pass
        await asyncio.gather(*(drain(r) for r in responses))
import uvloop; uvloop.run(main())
"""


@dataclass
class Emulator:
    process: asyncio.subprocess.Process
    url: str
    kubeconfig: str
    token: str
    command: str

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


EXTRA_OPTIONS: list[str] = []
"""``--devcluster-option`` values, added to every emulator's command line."""


@asynccontextmanager
async def emulator(*options: str, tls: bool = False) -> AsyncIterator[Emulator]:
    """A ``nexus devcluster`` process with one shard ``bench``; stopped with SIGTERM. It
    serves plain HTTP unless ``tls``: these figures are the API's, and what HTTPS adds is
    measured on its own (``devcluster_tls.py``)."""
    options = (*options, *EXTRA_OPTIONS, *(() if tls else ("--plain-http",)))
    directory = tempfile.mkdtemp(prefix="devcluster-bench-")
    argv = ["-m", "nexus", "devcluster", "--shard", "bench", "--kubeconfig-dir", directory]
    argv += ["--log-level", "WARNING", "--token", "bench", *options]
    process = await asyncio.create_subprocess_exec(PYTHON, *argv, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line.startswith("DEVCLUSTER READY "):
            raise RuntimeError(f"devcluster did not start: {line!r}")
        shard = json.loads(line.split(" ", 2)[2])["bench"]
        shown = " ".join(options)
        command = f"nexus devcluster --shard bench {shown}".strip()
        yield Emulator(process, shard["url"], shard["kubeconfig"], "bench", command)
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process ``pid`` used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Helper:
    line: str
    """The first line it printed."""
    pid: int


@asynccontextmanager
async def helper(source: str, *args: str) -> AsyncIterator[Helper]:
    """A helper process running ``source``, once it printed its first line."""
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-c", source, *args, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        yield Helper(line, process.pid)
    finally:
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


def manifest(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    env = spec.pop("env", None)
    container: dict[str, Any] = {"name": "main", "image": "algorithms/bench:1.0"}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
        container["args"] = spec.pop("args")
    template: dict[str, Any] = {"spec": {"restartPolicy": "Never", "containers": [container]}}
    if labels:
        template["metadata"] = {"labels": labels}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "bench", **(labels or {})}},
        "spec": {"template": template, **spec},
    }


async def create_many(
    api: client.ApiClient,
    count: int,
    inflight: int,
    prefix: str,
    *,
    duration: float | None = None,
    marks: list[float] | None = None,
    **spec: Any,
) -> tuple[int, int, float]:
    """Create ``count`` Jobs (or for ``duration`` s); ``(created, throttled, seconds)``.

    ``marks`` receives the time (from the start) at which each quarter of ``count`` was
    created.
    """
    batch = client.BatchV1Api(api)
    created = throttled = 0
    next_index = 0
    started = time.perf_counter()
    stop_at = started + duration if duration else float("inf")
    quarter = max(1, count // 4)

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
                if marks is not None and created % quarter == 0:
                    marks.append(time.perf_counter() - started)
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


async def wait_metric(
    url: str, name: str, done: Callable[[float], bool], timeout: float, every: float = 0.1
) -> list[tuple[float, float]]:
    """Poll ``name`` until ``done``; the ``(time, value)`` samples seen."""
    samples: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            value = await metric(session, url, name)
            samples.append((time.perf_counter(), value))
            if done(value):
                return samples
            await asyncio.sleep(every)
    raise TimeoutError(f"{name} did not reach its target in {timeout} s")


def quarter_rates(marks: list[float]) -> list[float]:
    """Items per second in each quarter, from the times at which each quarter ended."""
    pairs = zip([0.0, *marks], marks, strict=False)
    return [1 / max(end - start, 1e-3) for start, end in pairs]


def crossing(samples: list[tuple[float, float]], target: float) -> float:
    """When the sampled value reached ``target``, interpolated between two samples."""
    previous = samples[0]
    for sample in samples:
        if sample[1] >= target:
            (t0, v0), (t1, v1) = previous, sample
            return t1 if v1 == v0 else t0 + (t1 - t0) * (target - v0) / (v1 - v0)
        previous = sample
    return samples[-1][0]


def rerun(name: str, args: argparse.Namespace) -> str:
    """The command that reproduces one figure with the options it depends on."""
    options = {
        "a_off": f"--create-jobs {args.create_jobs}",
        "a_simulated": f"--create-jobs {args.create_jobs}",
        "b": f"--throttle-seconds {args.throttle_seconds}",
        "c": f"--memory-jobs {args.memory_jobs}",
        "d": f"--lifecycle-jobs {args.lifecycle_jobs}",
        "e": f"--lifecycle-jobs {args.lifecycle_jobs}",
    }[name]
    scale = f" --scale {args.scale:g}" if args.scale != 1 else ""
    extra = "".join(f" --devcluster-option={o}" for o in args.devcluster_option or ())
    return f".venv/bin/python {SCRIPT} --only {name} {options}{scale}{extra}"


async def figure_a(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    count = int(args.create_jobs * args.scale)
    marks: list[float] = []
    async with (
        emulator("--mode", mode, "--duration", "fixed:0.01") as emu,
        await fast_client(emu.kubeconfig, args.inflight) as api,
    ):
        before = sum(emu.cpu_seconds())
        created, _, seconds = await create_many(api, count, args.inflight, "a", marks=marks)
        cpu = sum(emu.cpu_seconds()) - before
    rate = created / seconds
    quarters = [count // 4 * r for r in quarter_rates(marks)]
    print(
        f"(a) {rate:,.0f} creates/s unthrottled, kubelet {mode} ({created} Jobs kept, "
        f"{args.inflight} in flight; first quarter {quarters[0]:,.0f}/s, last "
        f"{quarters[-1]:,.0f}/s), {cpu / created * 1000:.3f} ms emulator CPU per create"
        f"  [{emu.command}]"
    )
    return {
        "creates_per_second": round(rate),
        "first_quarter_per_second": round(quarters[0]),
        "last_quarter_per_second": round(quarters[-1]),
        "cpu_ms_per_create": round(cpu / created * 1000, 3),
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


async def figure_d(args: argparse.Namespace, watched: bool) -> dict[str, Any]:
    count = int(args.lifecycle_jobs * args.scale)
    async with (
        helper(STUB_SERVER) as stub,
        emulator("--mode", "simulated", "--duration", "fixed:0.01") as emu,
    ):
        base = f"http://127.0.0.1:{stub.line}"
        env = {
            "NEXUS__RECEIVER_URL": base,
            "NEXUS__RUN_TOKEN": "t",
            "NEXUS__RESULT_UPLOAD_URL": f"{base}/results/x",
            "NEXUS__ALGORITHM_NAME": "bench",
            "NEXUS__REQUEST_ID": "x",
        }
        labels = {LABEL: "algorithm-run"} if watched else None
        selector = f"{LABEL}%3Dalgorithm-run"
        async with (
            helper(WATCHERS, emu.url, emu.token, selector) if watched else _nothing() as watcher,
            await fast_client(emu.kubeconfig, args.inflight) as api,
        ):
            others = [stub.pid] + ([watcher.pid] if watcher is not None else [])
            user, system = emu.cpu_seconds()
            before = (time.process_time(), [cpu_seconds(pid) for pid in others])
            started = time.perf_counter()
            sampler = asyncio.create_task(
                wait_metric(
                    emu.url,
                    'devcluster_containers_terminated{reason="Completed"}',
                    lambda v: v >= count,
                    300,
                    every=0.05,
                )
            )
            await create_many(
                api,
                count,
                args.inflight,
                "d",
                env=env,
                args=[f"--sas-uri={base}/inputs/x", "--request-id=x"],
                labels=labels,
                ttlSecondsAfterFinished=0,
            )
            samples = await sampler
            seconds = time.perf_counter() - started
            user2, system2 = emu.cpu_seconds()
            client_cpu = time.process_time() - before[0]
            helpers_cpu = [cpu_seconds(pid) - b for pid, b in zip(others, before[1], strict=True)]
    marks = [crossing(samples, count * q / 4) - started for q in (1, 2, 3, 4)]
    quarters = [count / 4 * r for r in quarter_rates(marks)]
    rate = count / seconds
    cpu = (user2 - user + system2 - system) / count * 1000
    system_ms = (system2 - system) / count * 1000
    client_ms = client_cpu / count * 1000
    stub_ms = helpers_cpu[0] / count * 1000
    watcher_ms = helpers_cpu[1] / count * 1000 if watched else 0.0
    name = "e" if watched else "d"
    watching = ", 3 watches open" if watched else ""
    print(
        f"({name}) {rate:,.0f} simulated pod lifecycles/s (create → contract → Complete"
        f"{watching}; quarters {min(quarters):,.0f}-{max(quarters):,.0f}/s), "
        f"{cpu:.3f} ms emulator CPU per pod ({system_ms:.3f} system; {count:,} pods); "
        f"per pod also {client_ms:.3f} ms in the creating client, {stub_ms:.3f} ms in the "
        f"stub servers"
        + (f", {watcher_ms:.3f} ms in the watcher" if watched else "")
        + f"  [{emu.command}]"
    )
    return {
        "lifecycles_per_second": round(rate),
        "slowest_quarter_per_second": round(min(quarters)),
        "fastest_quarter_per_second": round(max(quarters)),
        "cpu_ms_per_pod": round(cpu, 3),
        "system_ms_per_pod": round(system_ms, 3),
        "client_cpu_ms_per_pod": round(client_ms, 3),
        "stub_cpu_ms_per_pod": round(stub_ms, 3),
        "watcher_cpu_ms_per_pod": round(watcher_ms, 3),
        "pods": count,
        "watches": 3 if watched else 0,
        "command": emu.command,
    }


@asynccontextmanager
async def _nothing() -> AsyncIterator[Helper | None]:
    yield None


FIGURES = ("a_off", "a_simulated", "b", "c", "d", "e")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    chosen = args.only or FIGURES
    figures: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    for name in chosen:
        if name == "a_off":
            figures[name] = await figure_a(args, "off")
        elif name == "a_simulated":
            figures[name] = await figure_a(args, "simulated")
        elif name == "b":
            figures[name] = await figure_b(args)
        elif name == "c":
            figures["c_ttl"] = await figure_c(args, ttl=True)
            if not args.skip_no_ttl:
                figures["c_no_ttl"] = await figure_c(args, ttl=False)
        else:
            figures[name] = await figure_d(args, watched=name == "e")
        for key in (name,) if name != "c" else ("c_ttl", "c_no_ttl"):
            if key in figures:
                figures[key]["rerun"] = rerun(name, args)
    figures["load_average_after"] = os.getloadavg()[0]
    print(f"load average {figures['load_average']:.2f} before, {os.getloadavg()[0]:.2f} after")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=FIGURES, help="figures to run")
    parser.add_argument("--inflight", type=int, default=32, help="create calls in flight")
    parser.add_argument("--create-jobs", type=int, default=20_000, help="Jobs for (a)")
    parser.add_argument("--throttle-seconds", type=float, default=5.0, help="duration of (b)")
    parser.add_argument("--memory-jobs", type=int, default=100_000, help="Jobs for (c)")
    parser.add_argument("--lifecycle-jobs", type=int, default=30_000, help="pods for (d), (e)")
    parser.add_argument("--skip-no-ttl", action="store_true", help="skip (c) without TTL")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count")
    parser.add_argument(
        "--devcluster-option",
        action="append",
        metavar="OPTION",
        help="added to every emulator's command line, e.g. --devcluster-option=--no-events",
    )
    arguments = parser.parse_args()
    EXTRA_OPTIONS.extend(arguments.devcluster_option or ())
    figures = asyncio.run(main(arguments))
    print(json.dumps(figures))
