"""CPU per Job creation on the local cluster over HTTPS against plain HTTP.

    .venv/bin/python benchmarks/devcluster_tls.py [--calls 3000] [--pairs 3] [--inflight 32]

The local clusters serve HTTPS by default (kubectl sends its token over TLS only). This
measures what that costs on the local system's hot path: the scheduler's Job creation,
made as the scheduler makes it (:meth:`nexus.core.shards.ShardClient.create_job`, the lean
client on kept-alive connections, ``--inflight`` calls at a time) against a ``nexus
devcluster`` process (one shard, kubelet off, so that only the API is measured).

Runs alternate HTTPS and plain HTTP (A/B/A/B, ``--pairs`` pairs, after a warm-up of each),
each on a fresh emulator, and report the CPU per call (process time) of the client and of
the emulator, each the median over the pairs; CPU time rather than wall time, so that a
busy machine shifts both alike. Connections are opened once per run (at most
``--inflight``): the TLS handshakes are in the figures, spread over ``--calls`` calls.
Prints a line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop
from devcluster_create import emulator

from nexus.core.shards import ShardClient

SCHEMES = ("https", "http")


def job(name: str) -> bytes:
    return orjson.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "labels": {"nexus/algorithm": "bench"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": name, "image": "algorithms/bench:1.0"}],
                    }
                },
            },
        }
    )


async def one_run(scheme: str, calls: int, inflight: int) -> dict[str, float]:
    """Create ``calls`` Jobs on a fresh emulator; CPU µs per call of client and server."""
    async with emulator("--mode", "off", tls=scheme == "https") as emu:
        assert emu.url.startswith(f"{scheme}://"), emu.url
        client = await ShardClient.from_kubeconfig("bench", Path(emu.kubeconfig), "nexus")
        try:
            bodies = [job(f"bench-{i}") for i in range(calls)]
            queue = iter(bodies)

            async def worker() -> None:
                for body in queue:
                    result = await client.create_job(body)
                    assert result.status == 201, result

            server_before = sum(emu.cpu_seconds())
            client_before = time.process_time()
            await asyncio.gather(*(worker() for _ in range(inflight)))
            client_cpu = time.process_time() - client_before
            server_cpu = sum(emu.cpu_seconds()) - server_before
        finally:
            await client.close()
    return {"client": client_cpu / calls * 1e6, "server": server_cpu / calls * 1e6}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    for scheme in SCHEMES:  # warm-up: imports, caches, first TLS context
        await one_run(scheme, max(100, args.calls // 10), args.inflight)
    runs: dict[str, list[dict[str, float]]] = {scheme: [] for scheme in SCHEMES}
    for _ in range(args.pairs):
        for scheme in SCHEMES:
            runs[scheme].append(await one_run(scheme, args.calls, args.inflight))
    figures: dict[str, Any] = {"calls": args.calls, "pairs": args.pairs, "inflight": args.inflight}
    for scheme, results in runs.items():
        for side in ("client", "server"):
            median = statistics.median(r[side] for r in results)
            figures[f"{scheme}_{side}_cpu_us"] = round(median, 1)
            print(f"{scheme:5} {side:6} CPU per Job creation: {median:7.1f} µs", flush=True)
    for side in ("client", "server"):
        plain, tls = figures[f"http_{side}_cpu_us"], figures[f"https_{side}_cpu_us"]
        figures[f"tls_{side}_extra"] = round(tls / plain - 1, 3)
        print(f"TLS adds {tls / plain - 1:+.0%} to the {side}'s CPU per call", flush=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="Jobs created per run")
    parser.add_argument("--pairs", type=int, default=3, help="A/B pairs of timed runs")
    parser.add_argument("--inflight", type=int, default=32, help="create calls in flight")
    print(json.dumps(uvloop.run(main(parser.parse_args()))))
