"""``nexus scheduler``: run the scheduler service."""

from __future__ import annotations

import argparse

from aiohttp import web

from nexus.core.config import load_settings
from nexus.core.lifecycle import serve
from nexus.scheduler.app import create_app
from nexus.scheduler.settings import SchedulerSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus scheduler",
        description=(
            "Run the scheduler: the public API v1.2, submission, the virtual queue and"
            " dispatch of Jobs to shards. Settings come from NEXUS__SECTION__KEY"
            " environment variables and an optional file (see docs/configuration.md)."
        ),
    )
    parser.add_argument("--config", help="settings file (YAML or TOML); default NEXUS__CONFIG_FILE")
    args = parser.parse_args(argv)
    settings = load_settings(SchedulerSettings, config_file=args.config)

    async def factory() -> web.Application:
        return await create_app(settings)

    return serve("scheduler", factory, settings.http, settings.log)
