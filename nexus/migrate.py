"""``nexus migrate``: bring the checkpoint store's schema up to date, then exit.

Services apply migrations themselves at start-up unless ``NEXUS__POSTGRES__MIGRATE_AT_START``
is off, when they wait for the schema instead; this command changes it ahead of them (the
migration Job of ``deploy/kubernetes``, or a rollout hook). It migrates whatever that
setting says.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass, field

from nexus.core.config import LogSettings, PostgresSettings, load_settings
from nexus.core.errors import DependencyError
from nexus.core.lifecycle import EXIT_CRASHED, EXIT_OK
from nexus.core.logs import configure
from nexus.core.migrations import apply_migrations


@dataclass(frozen=True)
class MigrateSettings:
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    log: LogSettings = field(default_factory=LogSettings)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus migrate",
        description="Apply pending checkpoint-store migrations (NEXUS__POSTGRES__DSN) and exit.",
    )
    parser.add_argument("--config", help="settings file (YAML or TOML); default NEXUS__CONFIG_FILE")
    args = parser.parse_args(argv)
    settings = load_settings(MigrateSettings, config_file=args.config)
    configure(settings.log, "migrate")
    try:
        version = asyncio.run(apply_migrations(settings.postgres.dsn))
    except DependencyError as exc:
        print(f"nexus migrate: {exc}", file=sys.stderr)
        return EXIT_CRASHED
    print(f"schema at version {version}")
    return EXIT_OK
