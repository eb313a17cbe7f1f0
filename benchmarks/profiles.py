"""Where a process spends its CPU: sampled stacks from py-spy, summed up.

    .venv/bin/pip install py-spy            # once; a tool, not a dependency of Nexus
    .venv/bin/python benchmarks/end_to_end.py --rate 800 --seconds 30 --profile DIR
    .venv/bin/python benchmarks/profiles.py DIR/scheduler-0.txt [--top 25] [--focus nexus/]

py-spy samples a running process from outside (no change to it, ``--nonblocking``: it is
not even paused) and records only threads that are running, so a frame's share of the
samples is its share of the process' CPU. :func:`record` starts one recorder per process;
:func:`summarise` reads their collapsed stacks (``frame;frame;… count``) and ranks frames
by *self* samples (the frame on top of the stack: where the CPU actually goes) and by
*inclusive* samples (anywhere on the stack: what a call costs with everything it calls).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE = 97
"""Samples per second: enough for a 30 s window, and off the beat of 10 ms timers."""
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def record(pids: dict[str, int], directory: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """One py-spy recorder per process for ``seconds``, writing ``directory/<name>.txt``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    recorders = []
    for name, pid in pids.items():
        command = [
            spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
            "--rate", str(RATE), "--format", "raw", "--nonblocking",
            "--output", str(directory / f"{name}.txt"),
        ]  # fmt: skip
        recorders.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return recorders


def _short(frame: str) -> str:
    """``function (…/site-packages/pkg/mod.py:12)`` → ``pkg/mod.py:function``."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3", "/wt/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    parts = path.split("/")
    if parts and parts[0] in {"perf", "main"}:
        parts = parts[1:]
    return f"{'/'.join(parts[-3:])}:{match['function']}"


def summarise(path: Path, top: int = 25, focus: str = "") -> str:
    """The ``top`` frames by self and by inclusive samples, as text."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            if focus in frame:
                inclusive[frame] += count
    lines = [f"{path.stem}: {total} samples ({total / RATE:.1f} s of CPU at {RATE} Hz)"]
    lines.append("  self:")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines.append(f"  inclusive{f' (frames containing {focus!r})' if focus else ''}:")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--focus", default="", help="inclusive ranking only of frames with this")
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top, args.focus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
