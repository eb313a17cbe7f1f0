"""The SDK's parts without a server, on fake clocks: retry budgets, long-poll pacing, the
keys that make ``nexus submit`` resumable, and the progress line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_sdk.batches import line_key, progress_line, read_runs
from nexus_sdk.calls import RunSpec, chunks, keyed
from nexus_sdk.models import RunState, Status, TagSummary
from nexus_sdk.retrying import LongPoll, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_retries_double_up_to_the_cap_and_stop_at_the_budget() -> None:
    clock = Clock()
    policy = RetryPolicy(total=10, attempts=None, first_delay=1, max_delay=4, jitter=0)
    attempts = policy.start(clock)
    delays = []
    while (delay := attempts.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    assert delays == [1, 2, 4]  # a fourth (4 s) would end past the 10 s budget


def test_retry_after_is_the_delay_but_never_a_busy_loop() -> None:
    clock = Clock()
    attempts = RetryPolicy(total=100, attempts=5, first_delay=0.5).start(clock)
    assert attempts.next_delay(retry_after=7) == 7
    assert attempts.next_delay(retry_after=0) == 0.5
    assert attempts.next_delay(retry_after=500) is None  # past the budget: give up now
    assert RetryPolicy.none().start(clock).next_delay() is None


def test_the_attempts_are_counted() -> None:
    attempts = RetryPolicy(attempts=3, jitter=0).start(Clock())
    assert attempts.next_delay() is not None and attempts.next_delay() is not None
    assert attempts.next_delay() is None  # the third failure was the last attempt


def test_a_long_poll_asks_for_the_rest_of_its_time_and_paces_a_server_that_does_not_hold() -> None:
    clock = Clock()
    poll = LongPoll(timeout=100, clock=clock)
    assert poll.next_wait() == 60
    assert poll.pause_after(asked=60, took=60) == 0  # held: ask again at once
    pauses = [poll.pause_after(asked=60, took=0.01) for _ in range(7)]
    assert pauses == [0.25, 0.5, 1, 2, 4, 5, 5]  # answered at once: poll ever more slowly
    clock.now += 99.5
    assert poll.next_wait() == 0
    clock.now += 1
    assert poll.next_wait() is None
    assert LongPoll(timeout=None, longest=2).next_wait() == 2


def test_every_run_gets_its_key_before_the_first_attempt() -> None:
    specs = list(keyed([{"a": 1}, RunSpec({"b": 2}, idempotency_key="mine")], tag="t"))
    assert specs[1].idempotency_key == "mine" and specs[0].idempotency_key
    assert {s.tag for s in specs} == {"t"}
    assert [len(c) for c in chunks(iter(specs * 5), 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="1 to 1000"):
        list(chunks(iter(specs), 1001))


def test_a_lines_key_is_its_files_name_number_and_content(tmp_path: Path) -> None:
    key = line_key("echo", "t", "/a/runs.jsonl", 3, b'{"x": 1}')
    assert key == line_key("echo", "t", "/elsewhere/runs.jsonl", 3, b'{"x": 1}')
    others = {
        line_key("echo", "t", "/a/runs.jsonl", 4, b'{"x": 1}'),
        line_key("echo", "t", "/a/runs.jsonl", 3, b'{"x": 2}'),
        line_key("echo", "t", "/a/other.jsonl", 3, b'{"x": 1}'),
        line_key("echo", "u", "/a/runs.jsonl", 3, b'{"x": 1}'),
        line_key("other", "t", "/a/runs.jsonl", 3, b'{"x": 1}'),
    }
    assert key not in others and len(others) == 5
    source = tmp_path / "runs.jsonl"
    body = {"algorithmParameters": {"y": 2}, "customConfiguration": {"cpuLimit": "2"}}
    source.write_text('{"x": 1}\n\n' + json.dumps(body) + "\n{broken\n")
    read = list(read_runs("echo", "t", str(source)))
    assert [number for number, _ in read] == [1, 3, 4]
    first, third, broken = (run for _, run in read)
    assert isinstance(first, RunSpec) and first.parameters == {"x": 1} and first.tag == "t"
    assert isinstance(third, RunSpec) and third.configuration == {"cpuLimit": "2"}
    assert isinstance(broken, str) and broken.startswith("not JSON")
    assert read == list(read_runs("echo", "t", str(source)))  # the same keys every time


def test_the_progress_line_counts_by_status() -> None:
    summary = TagSummary.from_wire(
        {"total": 10, "byStatus": {"RUNNING": 3, "COMPLETED": 5, "FAILED": 2, "NEW": 0}}
    )
    line = progress_line(summary, width=80)
    assert line.endswith("7/10  COMPLETED 5  FAILED 2  RUNNING 3")
    bar = line[1 : line.index("]")]
    assert bar.count("#") == len(bar) * 7 // 10
    assert summary.unsuccessful == 2 and not summary.finished
    assert not TagSummary.of_runs([]).finished  # no runs yet is not a finished batch
    done = RunState.from_wire({"requestId": "r", "status": "CANCELLED", "future": 1})
    assert done.finished and not done.completed and done.raw["future"] == 1
    assert TagSummary.of_runs([done]).by_status == {Status.CANCELLED: 1}
