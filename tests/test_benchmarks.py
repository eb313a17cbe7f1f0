"""The benchmark scripts are not run by the suite (they measure, and take minutes), but
each must still start: its imports and its options are checked with ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if "__main__" in p.read_text())


def test_there_are_benchmark_scripts() -> None:
    assert "end_to_end.py" in SCRIPTS and len(SCRIPTS) >= 8


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:500]


@pytest.mark.slow
def test_the_maintainer_sweep_benchmark_runs_at_a_small_size() -> None:
    """The one benchmark that drives the maintainer's classes in-process (the others start
    its processes), so a change to those must not leave it behind: run it small."""
    small = ["--rows", "5000", "--candidates", "200", "--queued", "100", "--events", "500"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "maintainer_sweep.py"), *small],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["sweep"]["running_sweep_ms_per_10k"] > 0, figures
    assert figures["adoption"]["queued"] == 100, figures


def test_the_end_to_end_benchmark_reads_every_result_back() -> None:
    """The figure the side-by-side report rests on: every run submitted flat out is seen
    finished through its tag's summary and read back with its result; and what PostgreSQL
    executed for them, statement by statement."""
    flat = ["--runs", "300", "--connections", "4", "--drain", "60", "--statements", "3"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "end_to_end.py"), *flat],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["submit"]["ok"] == 300, figures
    assert figures["finished"] == {"COMPLETED": 300}, figures
    assert figures["unfinished"] == 0, figures
    assert figures["results_read"] == {"ok": 300, "bad": 0, "unread": 0}, figures
    # and what they took, per run: every run's checkpoint was inserted, in batches, and
    # queued, popped and settled by scripts; the scheduler waited for something
    counts = figures["round_trips_per_run"]
    scheduler = counts["services"]["scheduler-0"]
    assert 0 < scheduler["batches"]["checkpoint-insert"] <= 1, counts
    assert 0 < scheduler["batches"]["queue-push"] <= 1, counts
    assert counts["redis_scripts"] > 0 and counts["redis_commands"]["evalsha"] > 0, counts
    assert counts["postgres_transactions"] > 0, counts
    assert scheduler["switches"]["voluntary"] > 0, counts
    statements = figures["statements"]
    assert len(statements["top"]) == 3 and statements["calls_per_run"] > 0, statements
    assert any(" runs " in s["query"] for s in statements["top"]), statements
