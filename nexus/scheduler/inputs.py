"""Inputs kept inline, remembered for the moment their algorithm asks for them.

A run whose input is kept with its checkpoint is usually dispatched by the pod that took it
and, moments later, its container fetches the input from that same pod's signed link. This
pod therefore keeps the most recent inline inputs in memory, bounded in bytes, and serves
them without a database read; anything not (or no longer) here is read from the store.
Inputs never change, so a remembered one cannot be stale.
"""

from __future__ import annotations

from collections import OrderedDict

from nexus.core.runs import RunKey


class RecentInputs:
    """The newest inline inputs, at most ``capacity`` bytes of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._size = 0
        self._inputs: OrderedDict[RunKey, bytes] = OrderedDict()

    def remember(self, key: RunKey, content: bytes) -> None:
        if len(content) > self.capacity:
            return
        self._inputs[key] = content
        self._size += len(content)
        while self._size > self.capacity:
            _, dropped = self._inputs.popitem(last=False)
            self._size -= len(dropped)

    def recall(self, key: RunKey) -> bytes | None:
        return self._inputs.get(key)

    def __len__(self) -> int:
        return len(self._inputs)
