"""Batches from the command line: ``nexus submit`` from a JSONL file, ``nexus wait`` on a tag.

``nexus submit ALG --from runs.jsonl --tag T`` sends the file's runs in chunks (bulk
requests, or one by one where the server has no bulk route). A line is a run's
``algorithmParameters``, or a whole run body (an object with ``algorithmParameters`` and
optionally ``customConfiguration`` and ``payloadValidFor``); blank lines are skipped.

Guarantees:

* **Resumable, never duplicated.** Each line's ``Idempotency-Key`` derives from the
  algorithm, the tag, the file's name, the line's number and its content. Running the
  same command again — after Ctrl-C, a crash, a network failure — sends every line again
  and the server answers the runs it already has instead of making new ones (for 24 h):
  nothing is half-submitted, whatever moment the interruption came. A line that changed
  is a new run.
* **Each line judged alone.** A line that is not JSON, or that the server refuses, is
  reported with its number on stderr; the others go on; the exit status is then 1.
* ``nexus wait ALG --tag T`` shows a live progress bar by status (on a terminal; one line
  per change elsewhere), fed by the tag summary held on the server up to 2 s at a time,
  and exits 0 only if every run of the tag completed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import TextIO

from nexus_sdk.calls import RunSpec
from nexus_sdk.console import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    print_json,
    say,
)
from nexus_sdk.models import Status, TagSummary
from nexus_sdk.syncclient import Client

ORDER = (Status.COMPLETED, Status.FAILED, Status.RUNNING, Status.BUFFERED, Status.NEW)
"""The statuses the progress line names first; the others follow by name."""


def line_key(algorithm: str, tag: str, source: str, number: int, line: bytes) -> str:
    """The idempotency key of one line of a batch file."""
    digest = hashlib.sha256(
        b"\0".join([algorithm.encode(), tag.encode(), os.path.basename(source).encode(), line])
    ).hexdigest()[:32]
    return f"nexus-submit:{digest}:{number}"


def read_runs(algorithm: str, tag: str, source: str) -> Iterator[tuple[int, RunSpec | str]]:
    """(line number, the run or why the line is not one) for each non-blank line."""
    with open(source, "rb") as file:
        for number, raw in enumerate(file, start=1):
            line = raw.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                yield number, f"not JSON: {exc}"
                continue
            key = line_key(algorithm, tag, source, number, line)
            if isinstance(value, dict) and "algorithmParameters" in value:
                yield number, RunSpec(
                    value["algorithmParameters"], tag, value.get("customConfiguration"),
                    payload_valid_for=value.get("payloadValidFor"), idempotency_key=key,
                )  # fmt: skip
            else:
                yield number, RunSpec(value, tag, idempotency_key=key)


def submit_file(client: Client, algorithm: str, tag: str, source: str, chunk: int) -> int:
    if not 1 <= chunk <= 1000:
        say("--chunk: expected 1 to 1000 runs a request")
        return EXIT_USAGE
    numbers: list[int] = []
    problems: list[str] = []

    def runs() -> Iterator[RunSpec]:
        for number, run in read_runs(algorithm, tag, source):
            if isinstance(run, str):
                problems.append(f"line {number}: {run}")
            else:
                numbers.append(number)
                yield run

    progress = Progress(sys.stderr)
    accepted = 0
    try:
        for outcomes in client.submit_chunks(algorithm, runs(), tag=tag, chunk_size=chunk):
            for outcome in outcomes:
                if outcome.accepted:
                    accepted += 1
                else:
                    line = numbers[outcome.index]
                    problems.append(f"line {line}: {outcome.error}: {outcome.message}")
            progress.show(f"submitted {accepted} runs tagged {tag!r}, {len(problems)} refused")
    except KeyboardInterrupt:
        progress.close()
        say(
            f"interrupted with {accepted} runs confirmed; run the same command again to go"
            " on: the lines already sent find their runs again, none is submitted twice"
        )
        return EXIT_INTERRUPTED
    except OSError as exc:
        progress.close()
        say(f"cannot read {source}: {exc.strerror}")
        return EXIT_USAGE
    progress.close()
    for problem in problems:
        say(problem)
    say(f"{accepted} runs submitted with tag {tag!r}; {len(problems)} lines refused")
    print_json({"tag": tag, "submitted": accepted, "refused": len(problems)})
    return EXIT_OK if not problems else EXIT_INCOMPLETE


def follow(client: Client, algorithm: str, tag: str, timeout: float | None) -> int:
    progress = Progress(sys.stderr)
    last: TagSummary | None = None
    try:
        for last in client.wait_tag(algorithm, tag, timeout=timeout, every=2):
            if last.total == 0:  # a typo in the tag, or runs not submitted: nothing to follow
                break
            progress.show(progress_line(last, progress.width))
    finally:
        progress.close()
    assert last is not None
    print_json(
        {
            "tag": tag,
            "total": last.total,
            "byStatus": {str(s): n for s, n in last.by_status.items()},
            "finished": last.finished,
        }
    )
    if last.total == 0:
        say(f"no runs of {algorithm} are tagged {tag!r}")
        return EXIT_INCOMPLETE
    if last.unsuccessful:
        say(f"{last.unsuccessful} of {last.total} runs did not complete")
        return EXIT_INCOMPLETE
    return EXIT_OK


def progress_line(summary: TagSummary, width: int) -> str:
    """``[#####-----]  523/1000  COMPLETED 500  FAILED 3  RUNNING 20  BUFFERED 477``"""
    total, done = summary.total, summary.done
    counts = sorted(
        (s for s, n in summary.by_status.items() if n),
        key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), str(s)),
    )
    text = "  ".join(f"{status} {summary.by_status[status]}" for status in counts)
    numbers = f"{done}/{total}"
    room = max(10, min(40, width - len(numbers) - len(text) - 6))
    filled = room if total == 0 else room * done // total
    return f"[{'#' * filled}{'-' * (room - filled)}]  {numbers}  {text}"


class Progress:
    """One line of progress: redrawn in place on a terminal, else printed when it changes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.width = shutil.get_terminal_size((100, 24)).columns if self.live else 100
        self._last = ""

    def show(self, line: str) -> None:
        if line == self._last:
            return
        self._last = line
        if self.live:
            self.stream.write(f"\r\x1b[K{line[: self.width - 1]}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self._last:
            self.stream.write("\n")
            self.stream.flush()
