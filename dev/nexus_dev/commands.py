"""The development package's ``nexus`` subcommands: ``nexus dev`` and ``nexus devcluster``.

``dev/pyproject.toml`` registers them in the entry-point group ``nexus.commands``, so the
``nexus`` command (:mod:`nexus_sdk.cli`) offers them wherever this package is installed and
nowhere else — never in the production image. Like the server's commands they import
their module only when chosen, and a bad setting ends them with one line and status 2.
"""

from __future__ import annotations

from nexus.commands import ServerCommand

dev = ServerCommand("nexus_dev.cli", "run the whole system locally on throwaway real services")
devcluster = ServerCommand("nexus_dev.cluster.cli", "run local Kubernetes API emulators (shards)")
