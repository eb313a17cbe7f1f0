"""Run records (:func:`nexus.core.runs.record`) behave as frozen dataclasses do; new runs get
new request ids."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any
from uuid import UUID

from nexus.core.queues import QueuedRun
from nexus.core.runs import RunKey, Stage, Transition

RUN = UUID("5f0c4f3e-8a43-4c8e-9d0b-2f7d7c1e9a11")


def test_records_are_equal_and_hash_alike_by_their_fields() -> None:
    key, same = RunKey("echo", RUN), RunKey("echo", UUID(str(RUN)))
    assert key == same and hash(key) == hash(same) and key is not same
    assert {key: 1}[same] == 1 and len({key, same, RunKey("other", RUN)}) == 2
    # a field left out of comparison is left out of the hash too, as in a frozen class
    queued = QueuedRun("shard-0", key, 1.0)
    parsed = QueuedRun.parse("shard-0", f"echo/{RUN}", "1")
    assert parsed.text == f"echo/{RUN}" and queued.text is None
    assert parsed == queued and hash(parsed) == hash(queued)


def test_a_record_is_replaced_not_changed() -> None:
    change = Transition("echo", RUN, Stage.RUNNING, shard="shard-0")
    later = dataclasses.replace(change, to=Stage.COMPLETED)
    assert (change.to, later.to, later.shard) == (Stage.RUNNING, Stage.COMPLETED, "shard-0")
    assert not hasattr(change, "__dict__")  # slots: no attribute beyond the fields


def test_single_submits_take_new_version_4_ids_from_a_batch_made_ahead() -> None:
    from types import SimpleNamespace

    from nexus.scheduler.submission import IDS_AT_ONCE, Submitter

    submitter: Any = SimpleNamespace(_ids=[])
    ids = [Submitter._new_id(submitter) for _ in range(3 * IDS_AT_ONCE + 1)]
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4} and {i.variant for i in ids} == {uuid.RFC_4122}
