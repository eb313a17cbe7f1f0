"""What the maintainer tests share: maintainers in-process or as processes, a store, a
proxy that makes a shard unreachable, and templates whose pods show a fault."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from support.system import NAMESPACE, System, free_port

from maintainer.app import MAINTAINER, Maintainer, create_app
from maintainer.settings import MaintainerSection, MaintainerSettings
from nexus.core.checkpoints import CheckpointStore
from nexus.core.config import HttpSettings, LogSettings
from nexus.core.lifecycle import LIFECYCLE, listen
from nexus.core.storage import PayloadStore

FAULT_ANNOTATION = "devcluster.nexus/fault"

# Every grace short, so that each signal is acted on within a second or two.
FAST = {
    "lease_ttl": 1.5,
    "check_interval": 0.1,
    "image_pull_grace": 1.0,
    "completion_grace": 1.0,
    "job_lost_grace": 0.3,
    "started_grace": 0.3,
    "watch_max_backoff": 0.5,
    "sweep_interval": 0.3,
    "queue_grace": 1.0,
    "new_grace": 1.0,
    "running_grace": 1.0,
    "deadline_slack": 1.0,
    "adopt_interval": 0.1,
}


def faulty(template: dict[str, Any], fault: str) -> dict[str, Any]:
    """``template`` whose pods all show ``fault`` in the simulated kubelet."""
    changed = copy.deepcopy(template)
    runtime = changed["spec"].setdefault("runtimeEnvironment", {})
    runtime["annotations"] = {FAULT_ANNOTATION: fault}
    return changed


def settings_for(
    system: System, kubeconfig_dir: Path | None = None, **section: Any
) -> MaintainerSettings:
    base = system.base_settings
    return MaintainerSettings(
        http=HttpSettings(host="127.0.0.1", port=free_port(), drain_delay=0, shutdown_timeout=5),
        log=LogSettings(format="text"),
        postgres=base.postgres,
        redis=base.redis,
        storage=base.storage,
        shards=replace(base.shards, kubeconfig_dir=kubeconfig_dir or base.shards.kubeconfig_dir),
        maintainer=MaintainerSection(
            instance=f"maintainer-{uuid.uuid4().hex[:6]}", **{**FAST, **section}
        ),
    )


@dataclass
class RunningMaintainer:
    """A maintainer application served in this event loop."""

    settings: MaintainerSettings
    app: web.Application
    runner: web.AppRunner
    stopped: bool = False

    @property
    def maintainer(self) -> Maintainer:
        return self.app[MAINTAINER]

    async def stop(self) -> None:
        """A clean stop: loops drained, lease released."""
        if not self.stopped:
            self.stopped = True
            self.app[LIFECYCLE].ready = False
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def running_maintainer(settings: MaintainerSettings) -> AsyncIterator[RunningMaintainer]:
    """The maintainer application, served in this event loop until the block ends."""
    app = await create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    await listen(runner, settings.http, host="127.0.0.1")
    app[LIFECYCLE].ready = True
    running = RunningMaintainer(settings, app, runner)
    try:
        yield running
    finally:
        await running.stop()


async def wait_until(
    predicate: Any, timeout: float = 15.0, what: str = "", dsn: str | None = None
) -> None:
    """Until ``predicate()`` is true; on timeout the message lists the runs of ``dsn`` that
    are not COMPLETED."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _call(predicate):
        if loop.time() > deadline:
            runs = await unfinished(dsn) if dsn else ""
            raise AssertionError(f"timed out waiting for {what or predicate}{runs}")
        await asyncio.sleep(0.05)


async def _call(predicate: Any) -> bool:
    result = predicate()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


@contextlib.asynccontextmanager
async def open_payloads(system: System) -> AsyncIterator[PayloadStore]:
    """The system's object storage, asynchronously (the harness's bucket calls block)."""
    payloads = await PayloadStore.open(system.base_settings.storage)
    try:
        yield payloads
    finally:
        await payloads.close()


@contextlib.asynccontextmanager
async def open_store(system: System) -> AsyncIterator[CheckpointStore]:
    store = await CheckpointStore.open(system.base_settings.postgres)
    try:
        yield store
    finally:
        await store.close()


# -- processes ---------------------------------------------------------------------------


def environment(sections: dict[str, Any]) -> dict[str, str]:
    """``NEXUS__SECTION__KEY`` variables for ``{section: {key: value}}``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS__")}
    for section, values in sections.items():
        for key, value in values.items():
            if value is None:
                continue
            text = str(value) if isinstance(value, str | Path) else orjson.dumps(value).decode()
            env[f"NEXUS__{section.upper()}__{key.upper()}"] = text
    return env


def shared_sections(system: System, kubeconfig_dir: Path | None = None) -> dict[str, Any]:
    """The settings sections every service of ``system`` shares, as plain values."""
    base = system.base_settings
    return {
        "log": {"format": "json", "level": "INFO"},
        "postgres": {"dsn": base.postgres.dsn, "pool_max_size": 4},
        "redis": {"url": base.redis.url, "key_prefix": base.redis.key_prefix},
        "storage": {
            "endpoint_url": base.storage.endpoint_url,
            "region": base.storage.region,
            "access_key_id": base.storage.access_key_id,
            "secret_access_key": base.storage.secret_access_key,
            "bucket": base.storage.bucket,
        },
        "shards": {
            "kubeconfig_dir": str(kubeconfig_dir or base.shards.kubeconfig_dir),
            "controller_kubeconfig": str(base.shards.controller_kubeconfig),
            "controller_namespace": NAMESPACE,
            "runtime_namespace": NAMESPACE,
            "create_rate": base.shards.create_rate,
            "default_create_rate": base.shards.default_create_rate,
        },
    }


def scheduler_sections(system: System, pod: str, port: int, **scheduler: Any) -> dict[str, Any]:
    """Settings of a ``nexus scheduler`` process joining ``system``."""
    base = system.base_settings
    tokens = [
        {"caller": t.caller, "sha256": t.sha256, "algorithms": list(t.algorithms)}
        for t in base.auth.service_tokens
    ]
    section = {
        "pod_name": pod,
        "public_url": f"http://127.0.0.1:{port}",
        "receiver_url": base.scheduler.receiver_url,
        "heartbeat_interval": base.scheduler.heartbeat_interval,
        "heartbeat_ttl": base.scheduler.heartbeat_ttl,
        "dispatch_idle_poll": base.scheduler.dispatch_idle_poll,
        "retry_base_delay": base.scheduler.retry_base_delay,
        "retry_max_delay": base.scheduler.retry_max_delay,
        **scheduler,
    }
    return {
        **shared_sections(system),
        "auth": {"service_tokens": tokens},
        "signing": {"keys": list(base.signing.keys)},
        "scheduler": section,
    }


def maintainer_sections(system: System, instance: str, **section: Any) -> dict[str, Any]:
    """Settings of a ``nexus maintainer`` process watching ``system``."""
    return {**shared_sections(system), "maintainer": {"instance": instance, **FAST, **section}}


async def stage_counts(dsn: str) -> dict[str, int]:
    """How many runs are in each stage (straight from the store)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT lifecycle_stage, count(*) FROM runs GROUP BY 1")
    finally:
        await conn.close()
    return {row[0]: row[1] for row in rows}


async def unfinished(dsn: str, limit: int = 20) -> str:
    """The runs not COMPLETED, one line each, for failure messages."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, lifecycle_stage, algorithm_failure_cause, algorithm_failure_details,"
            " attempts FROM runs WHERE lifecycle_stage <> 'COMPLETED' LIMIT $1",
            limit,
        )
    finally:
        await conn.close()
    return "".join(f"\n  {tuple(row.values())}" for row in rows)


@dataclass
class Process:
    """A ``nexus <command>`` child process, logging to a file."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int

    def kill(self) -> None:
        """SIGKILL: no shutdown, no hand-over, no lease release."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        found = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found


def spawn(command: str, env: dict[str, str], log_path: Path, port: int) -> Process:
    env = {**env, "NEXUS__HTTP__PORT": str(port), "NEXUS__HTTP__HOST": "127.0.0.1"}
    env.setdefault("NEXUS__HTTP__DRAIN_DELAY", "0")
    stream = open(log_path, "wb")  # noqa: SIM115 (the child writes it; closed below)
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", "nexus", command], env=env, stdout=stream, stderr=stream
        )
    finally:
        stream.close()
    return Process(popen, log_path, port)


async def wait_ready(session: Any, process: Process, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if process.popen.poll() is not None:
            raise AssertionError(f"process exited: {process.log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            async with session.get(f"http://127.0.0.1:{process.port}/health/ready") as answer:
                if answer.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not ready in {timeout} s: {process.log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    """Children started in the block are killed at its end, whatever happens."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.kill()


# -- a shard that can become unreachable --------------------------------------------------


async def create_job(system: System, shard: str, job: dict[str, Any]) -> dict[str, Any]:
    target = system.cluster[shard]
    async with system.session.post(
        f"{target.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
        json=job,
        headers={"Authorization": f"Bearer {target.token}"},
    ) as answer:
        assert answer.status == 201, await answer.text()
        return dict(await answer.json())


async def delete_job(system: System, shard: str, name: str) -> None:
    target = system.cluster[shard]
    async with system.session.delete(
        f"{target.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}",
        params={"propagationPolicy": "Background"},
        headers={"Authorization": f"Bearer {target.token}"},
    ) as answer:
        assert answer.status == 200, await answer.text()


async def post_event(system: System, shard: str, event: dict[str, Any]) -> None:
    target = system.cluster[shard]
    async with system.session.post(
        f"{target.url}/api/v1/namespaces/{NAMESPACE}/events",
        json=event,
        headers={"Authorization": f"Bearer {target.token}"},
    ) as answer:
        assert answer.status == 201, await answer.text()
