"""The emulator's hot modules compiled with mypyc, when built, and never when stale.

    make devcluster-compiled   # nexus_dev.cluster.compiled.build()
    make devcluster-sources    # nexus_dev.cluster.compiled.clean()

What a run costs the emulator is spread over thousands of small steps of Python (a store
write, its watch line, an Event, a pod's status), each already cut to the few dictionary
operations it needs; the interpreter's own work per step is what is left. mypyc (part of
mypy, which the project type-checks with already) compiles the typed modules of
:data:`MODULES` to C extensions that sit beside their sources, where Python imports them
first: the same code, the same behaviour, a quarter fewer instructions per run.

Guarantees:

* **Opt-in.** Nothing is compiled unless asked; without a build the sources run, as
  everywhere else (CI, a fresh checkout, a machine without a C compiler).
* **Never stale.** The build records a digest of every source it compiled (``compiled.json``
  beside them); at import, :func:`use_sources_if_changed` compares them, and when any
  source has changed since, every compiled module is ignored and imported from its source
  (with a logged warning naming the first changed one), because compiled modules call each other
  directly, so one recompiled source cannot replace one module alone.
* **Generated, never committed**: the extensions, ``compiled.json`` and ``build/`` are
  ignored by git; ``clean`` removes them.
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
    """Imports the compiled modules of :data:`MODULES` from their sources instead."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, HERE / f"{name}.py")


def use_sources_if_changed() -> None:
    """Ignore the compiled modules if a source changed since they were built (see above).
    Called by the package before it imports any of them."""
    if not STAMP.exists():
        return
    try:
        built: dict[str, str] = json.loads(STAMP.read_text())
        changed = next((m for m in MODULES if built.get(m) != _digest(m)), None)
    except (OSError, ValueError):
        changed = "compiled.json"
    if changed is None:
        return
    sys.meta_path.insert(0, _Sources())
    logging.getLogger(__name__).warning(
        "%s changed since the local cluster was compiled: running from the sources "
        "(make devcluster-compiled compiles it again)",
        changed,
    )


def _compiled_files() -> list[Path]:
    return [p for p in HERE.glob("*.so") if p.name.split(".")[0] in (*MODULES, "native__mypyc")]


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
    STAMP.write_text(json.dumps({m: _digest(m) for m in MODULES}, indent=1) + "\n")
