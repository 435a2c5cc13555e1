"""The ``otlp-triage`` command (also ``python -m processor``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .classify import CatalogError
from .config import Config, ConfigError
from .disk_queue import QueueDirError
from .security import SecurityFileError
from .downgrade import RulesError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otlp-triage",
        description="OTLP log processor: classify each record's traffic source, downgrade monitor noise, forward.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the processor (configured by environment variables, see README)")
    explain = commands.add_parser(
        "explain",
        help="show, per record of an OTLP/JSON file, the decided source, evidence and rule (nothing is sent)",
    )
    explain.add_argument("file", help="OTLP/JSON: one request, or one request per line; - for stdin")
    explain.add_argument("--summary", action="store_true", help="counts by source and rule, and the top noise sources")
    args = parser.parse_args(argv)

    if args.command == "serve":
        return serve()
    return explain_file(args.file, args.summary)


def explain_file(path: str, summary: bool) -> int:
    from .explain import ExplainError, explain, format_records, format_summary, read_requests

    try:
        config = Config.from_env()
        if path == "-":
            lines = sys.stdin.buffer.readlines()
        else:
            with open(path, "rb") as f:
                lines = f.readlines()
        explained = explain(read_requests(lines), config)
    except (ConfigError, CatalogError, RulesError, ExplainError, OSError) as e:
        print(f"otlp-triage explain: {e}", file=sys.stderr)
        return 2
    try:
        for line in (format_summary if summary else format_records)(explained):
            print(line)
    except BrokenPipeError:  # `explain ... | head`: the reader has seen enough
        sys.stderr.close()
    return 0


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
        except (CatalogError, RulesError, QueueDirError, SecurityFileError) as e:
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
