"""The helpers every object writer uses: uids and generated name suffixes."""

from __future__ import annotations

import uuid
from collections import Counter

from nexus_dev.cluster import statuses
from nexus_dev.cluster.statuses import new_uid, random_suffix


def test_uids_are_unique_uuid4_text_across_their_formatted_head() -> None:
    statuses._uids.next = 4094  # two before the head's next change
    statuses._uids.head = f"{statuses._UID_PREFIX}{0:09x}"
    uids = [new_uid() for _ in range(5000)]
    assert len(set(uids)) == len(uids)
    for uid in uids[:4]:
        parsed = uuid.UUID(uid)
        assert parsed.version == 4 and str(parsed) == uid
    assert uids[1].endswith("000000000fff") and uids[2].endswith("000000001000")


def test_suffixes_use_the_kubernetes_alphabet_evenly() -> None:
    alphabet = set("bcdfghjklmnpqrstvwxz2456789")
    drawn = [random_suffix() for _ in range(27_000)]
    assert all(len(s) == 5 and set(s) <= alphabet for s in drawn)
    for position in range(5):
        counts = Counter(s[position] for s in drawn)
        assert set(counts) == alphabet
        assert max(counts.values()) < 1.4 * min(counts.values())  # 1,000 each expected
    assert len(random_suffix(8)) == 8
