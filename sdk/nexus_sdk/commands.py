"""The client commands of ``nexus``, as :mod:`nexus_sdk.cli` finds them.

``sdk/pyproject.toml`` registers each object below in the entry-point group
``nexus.commands``. They share one module of option parsing and output
(:mod:`nexus_sdk.console`), which each command's ``main`` receives with the command's name
first, so one parser serves them all and ``nexus run --help`` still reads as its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from nexus_sdk.cli import Command


class ClientCommand(Command):
    """A client command: ``main([name, *argv])`` of the console module."""

    def run(self, name: str, argv: list[str]) -> int:
        main: Callable[[list[str]], int] = importlib.import_module(self.module).main
        return main([name, *argv])


run = ClientCommand("nexus_sdk.console", "submit one run; --wait prints its result")
submit = ClientCommand("nexus_sdk.console", "submit the runs of a JSONL file, resumably")
wait = ClientCommand("nexus_sdk.console", "follow a tagged batch to its end, with progress")
status = ClientCommand("nexus_sdk.console", "how a run stands")
result = ClientCommand("nexus_sdk.console", "print a run's result document")
cancel = ClientCommand("nexus_sdk.console", "cancel a run")
