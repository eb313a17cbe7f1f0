"""The ``nexus`` command: one entry point for whatever parts of Nexus are installed.

``nexus <command> [options]`` runs the subcommand registered under that name in the
entry-point group ``nexus.commands``. Each installed distribution contributes its own: the
server (``nexus``) ``scheduler``, ``receiver``, ``maintainer``, ``migrate`` and
``settings``; the development package (``nexus-dev``) ``dev`` and ``devcluster``; this
one (``nexus-sdk``) the client commands ``run``, ``submit``, ``wait``, ``status``,
``result`` and ``cancel`` (:mod:`nexus_sdk.commands`). So the same command lists and runs
what is there — in the production image, in a developer's virtual environment, and on a
machine with the SDK alone.

Guarantees:

* a subcommand's module is imported only when it is chosen: an entry point names a
  :class:`Command`, which holds the module's *name*; listing the commands imports only
  the small modules that declare them;
* a subcommand is that module's ``main(argv) -> int``; its result is the exit status;
* an unknown command exits with status 2 and the list of installed ones; a command of a
  Nexus distribution that is not installed says which package to install.

This module uses the standard library only and never imports the server: a distribution
adds what its commands share (the server: a bad setting ends with one line and status 2)
by subclassing :class:`Command`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

ENTRY_POINT_GROUP = "nexus.commands"
EXIT_USAGE = 2
"""Exit status of a command line that names no installed command (as argparse's)."""

PROVIDERS = {
    "scheduler": "nexus",
    "receiver": "nexus",
    "maintainer": "nexus",
    "migrate": "nexus",
    "settings": "nexus",
    "dev": "nexus-dev",
    "devcluster": "nexus-dev",
}
"""The commands of the other Nexus distributions, so that a missing one can be named."""


@dataclass(frozen=True)
class Command:
    """A ``nexus`` subcommand: ``main(argv) -> int`` of ``module``, imported when run."""

    module: str
    about: str
    """One line for ``nexus --help``."""

    def run(self, name: str, argv: list[str]) -> int:
        """Run the command called ``name`` on the command line with ``argv``."""
        main: Callable[[list[str]], int] = importlib.import_module(self.module).main
        return main(argv)


def installed() -> dict[str, EntryPoint]:
    """The registered commands by name, in name order (the first one of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return dict(sorted(found.items()))


def load(entry: EntryPoint) -> Command:
    """The :class:`Command` an entry point names; ``TypeError`` if it names something else."""
    command = entry.load()
    if not isinstance(command, Command):
        raise TypeError(f"{entry.value} is a {type(command).__name__}, not a nexus command")
    return command


def usage(commands: dict[str, EntryPoint]) -> str:
    lines = ["usage: nexus <command> [options]", "", "commands:"]
    for name, entry in commands.items():
        try:
            about = load(entry).about
        except Exception as exc:  # a broken install must not hide the other commands
            about = f"(cannot be loaded: {exc})"
        lines.append(f"  {name:<12} {about}")
    if not commands:
        lines.append("  (none installed)")
    missing: dict[str, list[str]] = {}
    for name, package in PROVIDERS.items():
        if name not in commands:
            missing.setdefault(package, []).append(name)
    if missing:
        lines.append("")
        lines += [
            f"{', '.join(names)}: install the {pkg} package" for pkg, names in missing.items()
        ]
    lines += ["", "`nexus <command> --help` describes each command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = installed()
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(commands))
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        if name in PROVIDERS:
            print(
                f"nexus: {name!r} is a command of the {PROVIDERS[name]} package, which is not "
                f"installed here: install {PROVIDERS[name]} to use it",
                file=sys.stderr,
            )
        else:
            print(f"nexus: unknown command {name!r}\n\n{usage(commands)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        command = load(commands[name])
    except (ImportError, AttributeError, TypeError) as exc:
        print(f"nexus: the command {name!r} cannot be loaded: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return command.run(name, rest)


if __name__ == "__main__":
    sys.exit(main())
