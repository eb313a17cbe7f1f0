"""The emulator's hot modules compiled with mypyc, when built, and never when stale.

    make devcluster-compiled   # python -P dev/nexus_dev/cluster/compiled.py build
    make devcluster-sources    # python -P dev/nexus_dev/cluster/compiled.py clean

What a run costs the emulator is spread over thousands of small steps of Python (a store
write, its watch line, an Event, a pod's status), each already cut to the few dictionary
operations it needs; the interpreter's own work per step is what is left. mypyc (part of
mypy, which the project type-checks with already) compiles the typed modules of
:data:`MODULES` to C extensions that sit beside their sources, where Python imports them
first: the same code, the same behaviour, a quarter fewer instructions per run.

Guarantees:

* **Opt-in.** Nothing is compiled unless asked; without a build the sources run, as
  everywhere else (CI, a fresh checkout, a machine without a C compiler).
* **Never stale.** The build records the digest of every source it compiled, taken before
  compiling, and the extensions it made (``compiled.json`` beside them); at import,
  :func:`use_sources_if_changed` compares them, and when any source has changed since, the
  modules compiled are not those of :data:`MODULES`, an extension is there that the build
  did not make (left by another version of this file) or one it made is gone, or
  extensions are there without their record, every module of the package is imported from
  its source (with a logged warning naming why), because compiled modules call each other
  directly, so one recompiled source cannot replace one module alone.
* **Generated, never committed**: the extensions, ``compiled.json`` and ``build/`` are
  ignored by git; ``clean`` removes every extension in the package's folder. Both are run
  by this file's path, without importing the package (whose import a broken build would
  break).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "nexus_dev.cluster"
HERE = Path(__file__).resolve().parent
STAMP = HERE / "compiled.json"
GROUP = f"{PACKAGE}.native"
"""mypyc's shared library for the group, ``native__mypyc``, kept inside the package."""
MODULES = (
    "apiserver",
    "deletion",
    "discovery",
    "events",
    "expansion",
    "fairness",
    "jobcontroller",
    "kubelet",
    "podstatus",
    "routing",
    "selectors",
    "simulation",
    "statuses",
    "store",
    "timeline",
    "validation",
    "watchstreams",
)
"""What a run goes through, from the API's handlers to the simulated pods (not the HTTP
server, nor the modules a run does not touch)."""


def _digest(module: str) -> str:
    return hashlib.sha256((HERE / f"{module}.py").read_bytes()).hexdigest()


class _Sources(importlib.abc.MetaPathFinder):
    """Imports every module of the package that has a source from it, not from an
    extension beside it."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        source = HERE / f"{name}.py"
        if package != PACKAGE or not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def _stale() -> str | None:
    """Why the extensions beside the sources must not be used, or ``None``."""
    extensions = sorted(p.name for p in _compiled_files())
    if not STAMP.exists():
        return f"{extensions[0]} is there without compiled.json" if extensions else None
    try:
        built = json.loads(STAMP.read_text())
        digests: dict[str, str] = built["modules"]
        made: list[str] = built["extensions"]
    except (OSError, ValueError, KeyError, TypeError):
        return "compiled.json cannot be read"
    if set(digests) != set(MODULES):
        return "the modules compiled are not those this version compiles"
    stray = next((name for name in extensions if name not in made), None)
    if stray is not None:
        return f"{stray} was not made by the last build"
    missing = next((name for name in made if name not in extensions), None)
    if missing is not None:  # the rest would call their own copy of it, not its source
        return f"{missing} of the last build is gone"
    changed = next((m for m in MODULES if digests[m] != _digest(m)), None)
    return None if changed is None else f"{changed} changed since the local cluster was compiled"


def use_sources_if_changed() -> None:
    """Ignore the compiled modules if they may not be those of these sources (see above).
    Called by the package before it imports any of them."""
    why = _stale()
    if why is None:
        return
    sys.meta_path.insert(0, _Sources())
    logging.getLogger(__name__).warning(
        "%s: running the local cluster from its sources (make devcluster-compiled compiles "
        "it again)",
        why,
    )


def _compiled_files() -> list[Path]:
    """Every extension in the package's folder: only a build of this file puts one there."""
    return list(HERE.glob("*.so"))


def clean() -> None:
    """Remove the extensions and the stamp: the sources run."""
    for path in _compiled_files():
        path.unlink()
    STAMP.unlink(missing_ok=True)


def build() -> None:
    """Compile :data:`MODULES` in place (a C compiler and mypyc needed) and stamp them."""
    import os

    from mypyc.build import mypycify  # type: ignore[import-untyped, unused-ignore]
    from setuptools import setup  # type: ignore[import-untyped, unused-ignore]

    clean()
    digests = {m: _digest(m) for m in MODULES}  # what is compiled: a later edit is a change
    root = HERE.parent.parent  # dev/, the distribution's root
    repository = root.parent  # where mypy finds the nexus packages the modules import
    os.environ["MYPYPATH"] = os.pathsep.join((str(repository), str(repository / "sdk")))
    os.chdir(root)
    paths = [str(Path(*PACKAGE.split("."), f"{m}.py")) for m in MODULES]
    setup(
        name="nexus-dev-compiled",
        ext_modules=mypycify(paths, group_name=GROUP),
        script_args=["build_ext", "--inplace", "--build-temp", "build/compiled"],
    )
    made = sorted(p.name for p in _compiled_files())
    STAMP.write_text(json.dumps({"modules": digests, "extensions": made}, indent=1) + "\n")


if __name__ == "__main__":
    # run by path, so that a broken build cannot stop its own repair; with -P, so that this
    # folder's modules (selectors.py) do not hide the standard library's
    {"build": build, "clean": clean}[sys.argv[1]]()
