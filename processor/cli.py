"""The ``otlp-triage`` command (also ``python -m processor``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .classify import CatalogError
from .config import Config, ConfigError
from .downgrade import RulesError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otlp-triage",
        description="OTLP log processor: classify each record's traffic source, downgrade monitor noise, forward.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the processor (configured by environment variables, see README)")
    args = parser.parse_args(argv)

    if args.command == "serve":
        return serve()
    parser.error(f"unknown command {args.command}")
    return 2


def serve() -> int:
    try:
        config = Config.from_env()
    except ConfigError as e:
        print(f"otlp-triage: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .service import Service

    async def run() -> int:
        try:
            service = Service(config)
        except (CatalogError, RulesError) as e:
            print(f"otlp-triage: invalid configuration:\n  - {e}", file=sys.stderr)
            return 2
        return await service.run()

    try:
        return asyncio.run(run())
    except OSError as e:  # e.g. address already in use
        print(f"otlp-triage: cannot start: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
