"""The ``cdc-pipelines`` command: one entry point over the library.

Exit codes: 0 success, 1 confirmed discrepancies remain (reconcile), 2 usage or
configuration error, 3 a service failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.errors import CdcPipelinesError

EXIT_OK = 0
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _stack_command(args: argparse.Namespace) -> int:
    layout = StackLayout.from_env()
    if args.stack_command == "up":
        statuses = stack.up(layout, report=_err)
        _print_status(statuses)
        _err(f"state and logs: {layout.state}; run 'eval \"$(cdc-pipelines stack env)\"'")
        return EXIT_OK
    if args.stack_command == "down":
        return EXIT_OK if stack.down(layout, report=_err) else 3
    if args.stack_command == "status":
        statuses = stack.status(layout)
        _print_status(statuses)
        return EXIT_OK if all(s.health.healthy for s in statuses) else 3
    if args.stack_command == "env":
        for name, value in stack.stack_env(layout).items():
            print(f"export {name}='{value}'")
        return EXIT_OK
    raise AssertionError(args.stack_command)


def _demo_command(args: argparse.Namespace) -> int:
    from cdc_pipelines.demo import run_demo

    return run_demo(report=_err)


def _print_status(statuses: Sequence[stack.ServiceStatus]) -> None:
    for item in statuses:
        state = "healthy" if item.health.healthy else "DOWN"
        owner = f"pid {item.pid}" if item.pid else "not started by the stack"
        print(f"{item.health.service:<12} {state:<8} {owner:<26} {item.health.detail}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-pipelines",
        description="Declare, deploy, watch, diff and repair a ScyllaDB → PostgreSQL CDC pipeline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stack_parser = commands.add_parser("stack", help="the local devstack of real services")
    stack_sub = stack_parser.add_subparsers(dest="stack_command", required=True)
    stack_sub.add_parser("up", help="install, start and wait for every service (idempotent)")
    stack_sub.add_parser("down", help="stop the processes the stack started")
    stack_sub.add_parser("status", help="probe every service; exit 3 when one is down")
    stack_sub.add_parser("env", help="print export lines with the connection settings")
    stack_parser.set_defaults(handler=_stack_command)
    demo_parser = commands.add_parser(
        "demo", help="bring up the local stack and run the pipeline end to end"
    )
    demo_parser.set_defaults(handler=_demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors already
        return int(exc.code or 0)
    try:
        return int(args.handler(args))
    except CdcPipelinesError as exc:
        _err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
