"""The ``cdc-pipelines`` command: one entry point over the library.

Exit codes: 0 success, 1 confirmed discrepancies remain (reconcile), 2 usage or
configuration error, 3 a service failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cdc_pipelines.commands import (
    config_cmd,
    connectors_cmd,
    ddl_cmd,
    demo_cmd,
    dlq_cmd,
    reconcile_cmd,
    stack_cmd,
)
from cdc_pipelines.commands.common import say
from cdc_pipelines.errors import CdcPipelinesError

COMMANDS = (stack_cmd, demo_cmd, config_cmd, ddl_cmd, connectors_cmd, reconcile_cmd, dlq_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-pipelines",
        description="Declare, deploy, watch, diff and repair a ScyllaDB → PostgreSQL CDC pipeline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    try:
        return int(args.handler(args))
    except CdcPipelinesError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
