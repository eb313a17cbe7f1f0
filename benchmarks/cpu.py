"""CPU seconds used by processes (and their children), read from /proc.

Benchmarks report CPU per run for each of our processes and for PostgreSQL and Redis, so
they sample user+system time of whole process trees (PostgreSQL's work happens in its
backends, children of the postmaster) before and after the measured window.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system seconds) of a live process, or ``None``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[1] is ppid; utime, stime, cutime, cstime are fields 11..14 (0-based after comm)
    cpu = sum(int(v) for v in fields[11:15]) / _TICKS
    return int(fields[1]), cpu


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and all its live descendants (children that exited and were
    waited for are included in their parent's counters)."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                parents[int(entry)], seconds[int(entry)] = found
    total = 0.0
    for pid, cpu in seconds.items():
        ancestor = pid
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            total += cpu
    return total


class CpuMeter:
    """CPU seconds used by named process trees between :meth:`start` and :meth:`stop`."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: tree_cpu(pid) for name, pid in self.roots.items()}

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(tree_cpu(pid) - self._before[name], 3) for name, pid in self.roots.items()
        }
        return self.used
