"""The ``nexus`` command: one entry point for every process of the system.

Each subcommand lives with the code it runs and is imported only when chosen, so that
``nexus receiver`` does not pay for the scheduler's imports. A subcommand's ``main`` takes
its own argument list and returns the process exit status.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from nexus.core.errors import ConfigError
from nexus.core.lifecycle import EXIT_CONFIG

COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("nexus.dev", "run the whole system locally on throwaway real services"),
    "devcluster": ("nexus.devcluster.cli", "run local Kubernetes API emulators (shards)"),
    "scheduler": ("nexus.scheduler.cli", "run the scheduler service (public API, dispatch)"),
    "receiver": ("receiver.cli", "run the receiver service (algorithm completions)"),
    "maintainer": ("maintainer.cli", "run the maintainer service (watches and sweeps)"),
    "migrate": ("nexus.migrate", "apply checkpoint-store migrations and exit"),
    "settings": ("nexus.settingsdoc", "print every setting of every service as Markdown"),
}


def _usage() -> str:
    lines = ["usage: nexus <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "`nexus <command> --help` describes each command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"nexus: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_CONFIG
    module = importlib.import_module(COMMANDS[name][0])
    command: Callable[[list[str]], int] = module.main
    try:
        return command(rest)
    except ConfigError as exc:
        print(f"nexus {name}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
