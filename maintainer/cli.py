"""``nexus maintainer``: run the maintainer service."""

from __future__ import annotations

import argparse

from aiohttp import web

from maintainer.app import create_app
from maintainer.settings import MaintainerSettings
from nexus.core.config import load_settings
from nexus.core.lifecycle import serve


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus maintainer",
        description=(
            "Run the maintainer: watches every shard, sweeps the checkpoint store and adopts"
            " the queues of dead scheduler pods, so that every acknowledged run reaches an"
            " end. One instance leads (a Redis lease); others wait as standbys. Settings come"
            " from NEXUS__SECTION__KEY environment variables and an optional file."
        ),
    )
    parser.add_argument("--config", help="settings file (YAML or TOML); default NEXUS__CONFIG_FILE")
    args = parser.parse_args(argv)
    settings = load_settings(MaintainerSettings, config_file=args.config)

    async def factory() -> web.Application:
        return await create_app(settings)

    return serve("maintainer", factory, settings.http, settings.log)
