"""Instructions per presigned URL, counted by callgrind (deterministic on a busy machine).

    .venv/bin/python benchmarks/presign.py [--credentials static|session] [--count 20000]

Every dispatch and every results read presigns a URL, so the payload store's signer is on
the hot path. Timing it on a shared machine measures the neighbours; counting the
instructions it executes does not. This runs a small program under
``valgrind --tool=callgrind`` twice, once presigning ``--count`` URLs through
:meth:`PayloadStore.presign_get` and once presigning none, and divides the difference
of the two totals by the count: start-up and imports cancel out.

``--credentials static`` signs with keys from the settings; ``session`` takes keys and a
session token from the environment through the default credential chain (as IRSA, Pod
Identity or an instance profile provide temporary credentials), which adds
``X-Amz-Security-Token`` to every URL. Prints one line, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = "inputs/algorithm=echo/0b409392-7d3c-4c1a-9b0e-5c1f2a3b4c5d"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE" + "x" * 700  # STS session tokens are ~700-1,000 characters


async def _presign(count: int, credentials: str) -> None:
    from nexus.core.config import StorageSettings
    from nexus.core.storage import PayloadStore

    keys = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPx"}
    settings = StorageSettings(
        endpoint_url="http://127.0.0.1:9",  # never reached: presigning needs no connection
        bucket="nexus",
        **(keys if credentials == "static" else {}),
    )
    store = await PayloadStore.open(settings)
    try:
        store.presign_get(KEY, 3600)  # warm: the day's signing key, cached lookups
        for _ in range(count):
            store.presign_get(KEY, 3600)
    finally:
        await store.close()


def _instructions(count: int, credentials: str) -> int:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if credentials == "session":
            env.update(
                AWS_ACCESS_KEY_ID="ASIAEXAMPLE",
                AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG+bPx",
                AWS_SESSION_TOKEN=TOKEN,
                AWS_CONFIG_FILE=os.devnull,
                AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                AWS_EC2_METADATA_DISABLED="true",
            )
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--inner", str(count), "--credentials", credentials,
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"callgrind failed: {done.stderr[-2000:]}")
        summary = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if summary is None:
            raise SystemExit("callgrind wrote no summary line")
        return int(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credentials", choices=["static", "session"], default="static")
    parser.add_argument("--count", type=int, default=20_000, help="URLs presigned (default 20000)")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:
        asyncio.run(_presign(args.inner, args.credentials))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    base = _instructions(0, args.credentials)
    total = _instructions(args.count, args.credentials)
    per_url = (total - base) / args.count
    print(f"{args.credentials} credentials: {per_url:,.0f} instructions per presigned URL")
    print(json.dumps({"credentials": args.credentials, "instructionsPerUrl": round(per_url)}))


if __name__ == "__main__":
    main()
