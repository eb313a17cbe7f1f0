"""The server's ``nexus`` subcommands, as the ``nexus`` command (:mod:`nexus_sdk.cli`) finds them.

``pyproject.toml`` registers each object below in the entry-point group ``nexus.commands``.
Each names the module whose ``main(argv)`` runs it, imported only when that command is
chosen, so ``nexus receiver`` does not pay for the scheduler's imports.

:class:`ServerCommand` adds what every process of the server guarantees about settings: a
missing or malformed one (:class:`~nexus.core.errors.ConfigError`) ends the process with
one line on stderr naming the key, and exit status 2, instead of a traceback.
"""

from __future__ import annotations

import sys

from nexus.core.errors import ConfigError
from nexus_sdk.cli import Command


class ServerCommand(Command):
    """A command that reads the server's settings: a ConfigError is one line and status 2."""

    def run(self, name: str, argv: list[str]) -> int:
        try:
            return super().run(name, argv)
        except ConfigError as exc:
            # imported here: the lifecycle module pulls in aiohttp, which listing the
            # commands must not pay for (the command's own module has loaded it by now)
            from nexus.core.lifecycle import EXIT_CONFIG

            print(f"nexus {name}: configuration error: {exc}", file=sys.stderr)
            return EXIT_CONFIG


scheduler = ServerCommand("nexus.scheduler.cli", "run the scheduler service (public API, dispatch)")
receiver = ServerCommand("receiver.cli", "run the receiver service (algorithm completions)")
maintainer = ServerCommand("maintainer.cli", "run the maintainer service (watches and sweeps)")
migrate = ServerCommand("nexus.migrate", "apply checkpoint-store migrations and exit")
settings = ServerCommand("nexus.settingsdoc", "print every setting of every service as Markdown")
