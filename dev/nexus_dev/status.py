"""The status of a running ``nexus dev``: a file for scripts, ``nexus dev status`` for people.

``nexus dev`` keeps ``status.json`` in its working directory (the READY line names it as
``status``) and rewrites it on every change: the system starting, running or stopping,
and each process of it dying, backing off, restarting and coming back (see
:mod:`nexus_dev.restarts`). Guarantees:

* **Whole or not at all.** Each version is written to a temporary file in the same
  directory and renamed over the old one, so a reader never sees half a document.
* **One shape.** :class:`SystemStatus` is the document (camelCase keys, times in ISO 8601
  UTC); a key is added, never renamed or dropped, so scripts keep working.
* **Nothing recreated.** Once the working directory is removed (a clean stop without
  ``--keep``) nothing writes there again. A kept directory ends with the final state,
  ``stopped`` or ``failed``.

``nexus dev status [PATH]`` (:func:`main`) shows every live local system found under the
system's temporary directory (where ``nexus dev`` puts its working directory unless told
otherwise), or the one at ``PATH``: a ``status.json``, a working directory, or a
``--workdir`` given to ``nexus dev``. ``--json`` prints the documents, one per line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

STATUS_FILE = "status.json"
WORKDIR_PREFIX = "nexus-local-"
"""How the working directories of ``nexus dev`` are named (see ``LocalServices``)."""

SystemState = Literal["starting", "running", "stopping", "stopped", "failed"]
ServiceState = Literal["running", "backing-off", "restarting", "stopped"]
"""``running``: its process is up (and was ready); ``backing-off``: it died and waits
before its next start; ``restarting``: a new process was started and is not ready yet;
``stopped``: the system stopped it."""


class LastExit(TypedDict):
    """How a process of the local system last ended."""

    code: int | None
    """Its exit status, when it exited by itself."""
    signal: str | None
    """The signal that ended it (``SIGKILL``, ...), when one did."""
    at: str
    reason: str | None
    """Why a restart was given up, when the process did not die by itself (e.g. it was
    not ready in time and was killed)."""


class ServiceDetails(TypedDict):
    """What a process of the local system is, beyond its name."""

    log: str
    """Its log file, which every process it had appends to."""
    url: NotRequired[str]
    pod: NotRequired[str]
    """A scheduler's pod name, which its restarts keep."""


class ServiceStatus(ServiceDetails):
    name: str
    state: ServiceState
    pid: int | None
    """Its process, while ``running``."""
    restarts: int
    """Processes started after the first, as a container's ``restartCount``."""
    since: str
    """When it entered ``state``."""
    lastExit: LastExit | None
    nextStartAt: str | None
    """While ``backing-off``: when the next process starts."""
    delay: float | None
    """While ``backing-off``: the back-off delay, in seconds."""


class RestartPolicyStatus(TypedDict):
    firstDelay: float
    maxDelay: float
    resetAfter: float
    failFast: bool


class SystemStatus(TypedDict):
    pid: int
    """``nexus dev`` itself."""
    state: SystemState
    startedAt: str
    updatedAt: str
    workdir: str
    restartPolicy: RestartPolicyStatus
    services: list[ServiceStatus]


def iso(at: float) -> str:
    """A wall-clock time (``time.time()``) as ISO 8601 UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write(path: Path, status: SystemStatus) -> None:
    """Replace ``path`` with ``status`` in one step; nothing if its directory is gone."""
    if not path.parent.is_dir():
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps(status, indent=1) + "\n")
        os.replace(temporary, path)
    except FileNotFoundError:  # the directory was removed meanwhile
        temporary.unlink(missing_ok=True)


def read(path: Path) -> SystemStatus:
    document: SystemStatus = json.loads(path.read_text())
    return document


def find(where: Path | None = None) -> list[Path]:
    """The status files ``where`` points at (see the module docstring). Without
    ``where``: those of the local systems still running under the temporary directory."""
    if where is not None and where.is_file():
        return [where]
    if where is not None and (where / STATUS_FILE).is_file():
        return [where / STATUS_FILE]
    parent = Path(tempfile.gettempdir()) if where is None else where
    found = sorted(parent.glob(f"{WORKDIR_PREFIX}*/{STATUS_FILE}"), key=_modified)
    return [path for path in found if _alive(path)]


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(path: Path) -> bool:
    try:
        pid = read(path)["pid"]
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def describe_exit(last: LastExit | None) -> str:
    if last is None:
        return "-"
    how = f"killed by {last['signal']}" if last["signal"] else f"exit status {last['code']}"
    if last["reason"]:
        how += f" ({last['reason']})"
    return f"{how} at {_clock(last['at'])}"


def render(status: SystemStatus, now: float | None = None) -> str:
    """A person's view of one local system."""
    now = time.time() if now is None else now
    state = status["state"]
    if state in ("starting", "running", "stopping") and not _alive_pid(status["pid"]):
        state = "stopped"  # killed without a word: the file is all that is left
    lines = [
        f"nexus dev (pid {status['pid']}) {state} since {_clock(status['startedAt'])}, "
        f"in {status['workdir']}",
    ]
    rows = [("SERVICE", "STATE", "PID", "RESTARTS", "LAST EXIT")]
    for service in status["services"]:
        last = describe_exit(service["lastExit"])
        if service["state"] == "backing-off" and service["nextStartAt"]:
            wait = max(0.0, _seconds(service["nextStartAt"]) - now)
            last += f"; next start in {wait:.1f} s"
        pid = service["pid"]
        rows.append(
            (service["name"], service["state"], str(pid or "-"), str(service["restarts"]), last)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4]]))
    return "\n".join(line.rstrip() for line in lines)


def _alive_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _clock(text: str) -> str:
    """``HH:MM:SS`` in local time."""
    return datetime.fromtimestamp(_seconds(text)).strftime("%H:%M:%S")


def main(argv: list[str]) -> int:
    """``nexus dev status``: 0 when a local system was found, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="nexus dev status",
        description="Show the processes of running local systems (nexus dev): state, pid, "
        "restarts and how each last ended.",
    )
    parser.add_argument(
        "path",
        nargs="?",
        type=Path,
        default=None,
        help="a status.json, a working directory, or the --workdir given to nexus dev "
        "(default: every running local system under the temporary directory)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print each status document, one per line"
    )
    args = parser.parse_args(argv)
    paths = find(args.path)
    if not paths:
        where = args.path or Path(tempfile.gettempdir())
        print(f"nexus dev status: no running local system found in {where}", file=sys.stderr)
        return 1
    views = []
    for path in paths:
        try:
            status = read(path)
        except (OSError, ValueError) as exc:
            print(f"nexus dev status: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        views.append(json.dumps(status, separators=(",", ":")) if args.json else render(status))
    print(("\n" if args.json else "\n\n").join(views))
    return 0
