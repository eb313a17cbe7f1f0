"""Round trips and wake-ups per run: what a benchmark's runs cost besides CPU time.

CPU per run moves by a tenth from one invocation to the next on a shared machine; what
causes much of it at moderate load does not: the statements, scripts and batches each run
takes, and how often each process is put to sleep and woken (a context switch, with the
caches it cools). :class:`RoundTrips` reads them before and after a window, as
:class:`cpu.CpuMeter` reads CPU time:

* Redis: the calls of each command (``INFO commandstats``; commands run inside a script
  are counted too, so ``evalsha`` is the scripts and the rest mostly their contents);
* PostgreSQL: transactions committed in the database (each statement outside a
  transaction is one);
* each Nexus process: its group-committed batches by writer (``queue-push``,
  ``checkpoint-insert`` …, from its ``/metrics``), and its voluntary (it waited for
  something) and involuntary (another process took its core) context switches.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

BATCHES = "nexus_group_commit_batch_size_count"


def _commandstats(text: str) -> dict[str, int]:
    """Calls by command from ``INFO commandstats`` (``cmdstat_get:calls=3,usec=…``)."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            found = dict(field.split("=", 1) for field in fields.split(","))
            calls[name.removeprefix("cmdstat_")] = int(found["calls"])
    return calls


async def _redis_info(url: str) -> str:
    """``INFO commandstats`` over a plain connection (RESP: one command, one bulk reply)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 6379)
    try:
        if parts.password is not None:
            words = [b"AUTH", *([unquote(parts.username).encode()] if parts.username else [])]
            words.append(unquote(parts.password).encode())
            writer.write(_command(words))
            if not (await reader.readline()).startswith(b"+OK"):
                raise ConnectionError("redis refused the password")
        writer.write(_command([b"INFO", b"commandstats"]))
        size = int((await reader.readline())[1:])
        return (await reader.readexactly(size + 2)).decode()[:-2]
    finally:
        writer.close()
        await writer.wait_closed()


def _command(words: list[bytes]) -> bytes:
    """One command in RESP."""
    return b"".join([b"*%d\r\n" % len(words), *(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)])


def _batches(url: str) -> dict[str, float]:
    """Group-committed batches written so far by a Nexus process, by writer."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        sample.labels["writer"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == BATCHES
    }


def _switches(pid: int) -> dict[str, int]:
    """A process' context switches so far: ``voluntary`` and ``involuntary``."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
            name, _, value = line.partition(":")
            found[name.split("_")[0].replace("non", "in")] = int(value)
    return found


class RoundTrips:
    """Counts of the window between :meth:`start` and :meth:`stop`, per run."""

    def __init__(
        self, redis_url: str, postgres_dsn: str, services: dict[str, tuple[str, int]]
    ) -> None:
        self.redis_url = redis_url
        self.postgres_dsn = postgres_dsn
        self.services = services
        """Each Nexus process' name, with its URL and process id."""
        self._before: dict[str, Any] = {}

    async def _read(self) -> dict[str, Any]:
        conn = await asyncpg.connect(self.postgres_dsn)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        return {
            "redis": _commandstats(await _redis_info(self.redis_url)),
            "postgres_transactions": int(commits),
            "services": {
                name: {"batches": _batches(url), "switches": _switches(pid)}
                for name, (url, pid) in self.services.items()
            },
        }

    async def start(self) -> None:
        self._before = await self._read()

    async def stop(self, runs: int) -> dict[str, Any]:
        """Each count's growth since :meth:`start`, per run (of ``runs``), rounded."""
        after, before, n = await self._read(), self._before, max(1, runs)

        def per_run(now: float, then: float) -> float:
            return round((now - then) / n, 3)

        redis = {
            command: per_run(calls, before["redis"].get(command, 0))
            for command, calls in sorted(after["redis"].items())
            if calls != before["redis"].get(command, 0)
        }
        services = {}
        for name, counts in after["services"].items():
            then = before["services"][name]
            services[name] = {
                "batches": {
                    writer: per_run(value, then["batches"].get(writer, 0))
                    for writer, value in sorted(counts["batches"].items())
                    if value != then["batches"].get(writer, 0)
                },
                "switches": {
                    kind: per_run(value, then["switches"][kind])
                    for kind, value in counts["switches"].items()
                },
            }
        return {
            "redis_commands": redis,
            "redis_scripts": round(redis.get("evalsha", 0) + redis.get("eval", 0), 3),
            "postgres_transactions": per_run(
                after["postgres_transactions"], before["postgres_transactions"]
            ),
            "services": services,
        }
