"""The fault suite: each real part of the local system fails under a steady load.

One ``nexus dev --mode simulated --schedulers 2 --receivers 2`` serves every case (real
PostgreSQL, Redis, SeaweedFS, the Kubernetes emulator, two receivers behind one address,
two schedulers and the maintainer, each a process its supervisor restarts as a kubelet
would). Each case submits ``echo-stored`` runs (input in S3) at a steady rate to both
schedulers in turn, does one thing to one process (or to both receivers: killed or
stopped together, or replaced one at a time as a rolling update does), keeps the load
on a few seconds more, and follows every acknowledged run to its end
(:mod:`nexus_dev.faults`). Every case asserts:

* no acknowledged run lost or stuck;
* no run failed whose algorithm succeeded (simulated algorithms all succeed);
* while a store is down, only ``503``/``429`` answers with ``Retry-After``;

and prints its figures (runs accepted, lost, wrongly failed, refused, recovery
seconds) as a JSON line: ``pytest tests/faults -s`` shows them. Loads are small and
the faults last seconds, so the whole module takes about two minutes; the longer soak
is ``benchmarks/faults_soak.py``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.devprocess import DevProcess

from nexus_dev.faults import LocalSystem, run_case

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

RATE = 25.0
"""Runs submitted a second, across both schedulers."""
RECEIVERS = ("receiver-0", "receiver-1")
"""Both receivers: killed or stopped together (none left), or replaced one at a time."""


@pytest.fixture(scope="module")
def system() -> Iterator[LocalSystem]:
    dev = DevProcess(
        "--mode", "simulated", "--schedulers", "2", "--receivers", "2", "--restart-delay", "0.2",
        env={
            # a maintainer restarted takes its lease back at once; its sweeps run often
            "NEXUS__MAINTAINER__INSTANCE": "maintainer-faults",
            "NEXUS__MAINTAINER__SWEEP_INTERVAL": "2",
            # a submission waiting on object storage answers 503 well within the load's
            # patience (10 s a request), not as that patience runs out
            "NEXUS__STORAGE__REQUEST_TIMEOUT": "4",
        },
    )  # fmt: skip
    try:
        ready = dev.ready(timeout=120)
        time.sleep(3)  # every process past its start-up (a store killed then is another fault)
        yield LocalSystem(ready)
        code, logs = dev.finish(signal.SIGTERM)
        assert code == 0, logs
    finally:
        dev.kill()


def _scheduler_url(system: LocalSystem, name: str) -> str:
    url: str = system.service(name)["url"]
    return url


CASES: dict[str, Callable[[LocalSystem], tuple[Callable[[], None], str | None]]] = {
    "postgres-killed": lambda s: (s.kill("postgres"), None),
    "redis-killed-restarted-empty": lambda s: (s.kill("redis"), None),
    "s3-frozen-4s": lambda s: (s.freeze("s3", 4.0), None),
    "s3-restarted": lambda s: (s.restart("s3"), None),
    "s3-killed": lambda s: (s.kill("s3"), None),
    "receiver-killed": lambda s: (s.kill(*RECEIVERS), None),
    "receiver-restarted": lambda s: (s.restart(*RECEIVERS), None),
    "receiver-rolling-restart": lambda s: (s.roll_out(*RECEIVERS), None),
    "scheduler-killed": lambda s: (s.kill("scheduler-0"), _scheduler_url(s, "scheduler-0")),
    "scheduler-rolling-restart": lambda s: (
        s.restart("scheduler-1"),
        _scheduler_url(s, "scheduler-1"),
    ),
    "maintainer-killed": lambda s: (s.kill("maintainer"), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_fault_under_load_loses_nothing_and_fails_nothing(system: LocalSystem, case: str) -> None:
    system.whole()  # the last case's stores back and taking writes
    fault, killed = CASES[case](system)
    result = run_case(system, case, fault, rate=RATE, killed=killed)
    figures: dict[str, Any] = {**result.figures(), "outcomes": result.outcomes}
    print(json.dumps(figures))
    assert result.accepted > 0
    assert result.lost == 0, figures
    assert result.wrongly_failed == 0, figures
    assert result.bad_answers == [], result.bad_answers[:5]
