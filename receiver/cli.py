"""``nexus receiver``: run the receiver service."""

from __future__ import annotations

import argparse

from aiohttp import web

from nexus.core.config import load_settings
from nexus.core.lifecycle import serve
from receiver.app import create_app
from receiver.settings import ReceiverSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus receiver",
        description=(
            "Run the receiver: algorithm containers report their completions here."
            " Settings come from NEXUS__SECTION__KEY environment variables and an optional file."
        ),
    )
    parser.add_argument("--config", help="settings file (YAML or TOML); default NEXUS__CONFIG_FILE")
    args = parser.parse_args(argv)
    settings = load_settings(ReceiverSettings, config_file=args.config)

    async def factory() -> web.Application:
        return await create_app(settings)

    return serve("receiver", factory, settings.http, settings.log)
