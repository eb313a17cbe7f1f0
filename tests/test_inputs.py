"""The scheduler's memory of recent inline inputs stays within its byte budget."""

from __future__ import annotations

import uuid

from nexus.core.runs import RunKey
from nexus.scheduler.inputs import RecentInputs


def key() -> RunKey:
    return RunKey("echo", uuid.uuid4())


def test_recent_inputs_forget_the_oldest_beyond_their_capacity() -> None:
    inputs = RecentInputs(capacity=100)
    keys = [key() for _ in range(5)]
    for k in keys:
        inputs.remember(k, b"x" * 30)
    assert len(inputs) == 3
    assert [inputs.recall(k) for k in keys[:2]] == [None, None]
    assert all(inputs.recall(k) == b"x" * 30 for k in keys[2:])


def test_an_input_larger_than_the_capacity_is_not_kept() -> None:
    inputs = RecentInputs(capacity=10)
    big = key()
    inputs.remember(big, b"y" * 11)
    assert inputs.recall(big) is None
    assert len(inputs) == 0


def test_capacity_zero_keeps_nothing() -> None:
    inputs = RecentInputs(capacity=0)
    k = key()
    inputs.remember(k, b"z")
    assert inputs.recall(k) is None
    assert len(inputs) == 0
