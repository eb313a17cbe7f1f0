"""What the local S3 server alone costs per result upload, at the rates runs arrive.

    .venv/bin/python benchmarks/object_store.py [--rates 200,600,1000,2000] [--seconds 10]

Every run of the end-to-end benchmark ends with its algorithm PUTting a small result to a
presigned URL. This starts SeaweedFS as every local system does and sends exactly that,
with nothing else running: at each rate, for ``--seconds``, one presigned PUT of a 17-byte
JSON result per run, open loop on kept-alive connections. Reported: the server's CPU
microseconds per PUT and the cores that makes at that rate, this client's own CPU, and
how many PUTs were not stored (a server too slow for the rate leaves some unsent).
Prints a line per rate, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cpu import CpuMeter
from loadgen import open_loop, request_bytes

from nexus_dev.servers.s3 import LocalS3, S3Info

BUCKET = "nexus"
RESULT = b'{"index": 123456}'


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(info: S3Info, pid: int, rate: float, seconds: float) -> dict[str, float]:
    signer = info.signer()

    def put(index: int) -> bytes:
        key = f"results/algorithm=echo/{int(rate)}-{index:08d}"
        url = signer.presign_object("PUT", info.endpoint_url, BUCKET, key, expires_in=600)
        return request_bytes("PUT", url, RESULT)

    meter = CpuMeter({"seaweedfs": pid})
    client = _own_cpu()
    meter.start()
    results = await open_loop(info.endpoint_url, put, rate=rate, duration=seconds)
    server = meter.stop()["seaweedfs"]
    client = _own_cpu() - client
    stored = results.ok
    if not stored:
        raise SystemExit(f"at {rate}/s no PUT was stored: {results.summary()}")
    figures = {
        "rate": rate,
        "puts_per_second": round(stored / results.seconds, 1),
        "not_stored": int(rate * seconds) - stored,  # refused, failed, or not sent: too slow
        "seaweedfs_cpu_us_per_put": round(server / stored * 1e6, 1),
        "seaweedfs_cores": round(server / results.seconds, 2),
        "client_cpu_us_per_put": round(client / stored * 1e6, 1),
        "p99_ms": results.summary()["p99_ms"],
    }
    print(
        f"{rate:.0f} PUT/s offered: {figures['puts_per_second']}/s stored"
        f" ({figures['not_stored']} not),"
        f" SeaweedFS {figures['seaweedfs_cpu_us_per_put']} µs per PUT"
        f" = {figures['seaweedfs_cores']} cores; client {figures['client_cpu_us_per_put']} µs"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="200,600,1000,2000", help="PUTs per second, each")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate runs")
    args = parser.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error("--rates takes numbers separated by commas, e.g. 200,2000")
    if not rates or min(rates) <= 0:
        parser.error("--rates must be positive")
    with tempfile.TemporaryDirectory(prefix="nexus-bench-s3-") as directory:
        server = LocalS3(Path(directory))
        server.start()
        try:
            assert server.pid is not None
            info = server.info
            if info.call("PUT", BUCKET).status != 200:
                raise SystemExit("the local S3 server refused to make its bucket")
            figures = [asyncio.run(measure(info, server.pid, rate, args.seconds)) for rate in rates]
        finally:
            server.stop()
    print(json.dumps({"benchmark": "object-store", "per_rate": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
