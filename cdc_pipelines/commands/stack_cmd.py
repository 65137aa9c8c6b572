"""``cdc-pipelines stack up|down|status|env``: the local stack of real services."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cdc_pipelines.commands.common import EXIT_OK, EXIT_SERVICE, say
from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("stack", help="the local stack of real services")
    sub = parser.add_subparsers(dest="stack_command", required=True)
    sub.add_parser("up", help="install, start and wait for every service (idempotent)")
    sub.add_parser("down", help="stop the processes the stack started")
    sub.add_parser("status", help="probe every service; exit 3 when one is down")
    sub.add_parser("env", help="print export lines with the connection settings")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    layout = StackLayout.from_env()
    if args.stack_command == "up":
        print_status(stack.up(layout, report=say))
        say(f"state and logs: {layout.state}; run 'eval \"$(cdc-pipelines stack env)\"'")
        return EXIT_OK
    if args.stack_command == "down":
        return EXIT_OK if stack.down(layout, report=say) else EXIT_SERVICE
    if args.stack_command == "status":
        statuses = stack.status(layout)
        print_status(statuses)
        return EXIT_OK if all(s.health.healthy for s in statuses) else EXIT_SERVICE
    for name, value in stack.stack_env(layout).items():
        print(f"export {name}='{value}'")
    return EXIT_OK


def print_status(statuses: Sequence[stack.ServiceStatus]) -> None:
    for item in statuses:
        state = "healthy" if item.health.healthy else "DOWN"
        if item.pid:
            owner = f"pid {item.pid}"
        elif item.process_gone:
            owner = f"process gone (pid {item.recorded_pid})"
        elif item.health.healthy:
            owner = "not started by the stack"
        else:
            owner = "not running"
        lines = item.health.detail.strip().splitlines()
        detail = lines[0] if lines else ""
        print(f"{item.health.service:<12} {state:<8} {owner:<26} {detail}")
