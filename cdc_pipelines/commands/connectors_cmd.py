"""``cdc-pipelines connectors plan|apply|status|restart``: the streaming path in Kafka Connect."""

from __future__ import annotations

import argparse
import json

from cdc_pipelines.commands.common import (
    EXIT_OK,
    EXIT_SERVICE,
    add_config_option,
    declaration,
    say,
    settings,
)
from cdc_pipelines.connect.client import ConnectClient, shown_config_value
from cdc_pipelines.connect.configs import ConnectorConfig, connector_configs, sink_connector_configs
from cdc_pipelines.errors import ConnectError


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("connectors", help="generate, deploy and watch the connectors")
    sub = parser.add_subparsers(dest="connectors_command", required=True)
    for name, text in (
        ("plan", "print the generated configs and the diff against what Connect runs"),
        ("apply", "validate, then create or update connectors whose config differs"),
        ("status", "connector and task state; exit 3 when a task is not RUNNING"),
        (
            "restart",
            "restart failed tasks (includeTasks=true&onlyFailed=true); --all restarts every "
            "connector and task, which resolves their secrets again after a rotation",
        ),
    ):
        command = sub.add_parser(name, help=text)
        add_config_option(command)
        command.add_argument(
            "--sinks-only",
            action="store_true",
            help="leave the Scylla CDC source out (its plugin is not installed everywhere)",
        )
        if name == "plan":
            command.add_argument("--json", action="store_true", help="print configs as JSON")
        if name == "restart":
            command.add_argument(
                "--all",
                action="store_true",
                help="restart every declared connector with all its tasks, running or not: the "
                "worker resolves their ${vault:…}/${file:…} references again, so a rotated "
                "password or salt is used from here on",
            )
    parser.set_defaults(handler=run)


def desired(args: argparse.Namespace) -> tuple[ConnectorConfig, ...]:
    config = declaration(args)
    if args.sinks_only:
        return sink_connector_configs(config)
    return connector_configs(config)


def run(args: argparse.Namespace) -> int:
    wanted = desired(args)
    client = ConnectClient(settings().connect_url)
    command = args.connectors_command
    if command == "plan":
        if args.json:
            shown = {
                c.name: {k: shown_config_value(k, v) for k, v in c.config.items()} for c in wanted
            }
            print(json.dumps(shown, indent=2))
        else:
            for connector in wanted:
                print(f"# {connector.name}")
                for key, value in sorted(connector.config.items()):
                    print(f"{key}={shown_config_value(key, value)}")
                print()
        try:
            changes = client.plan(wanted)
        except ConnectError as exc:
            say(f"cannot compare with the running connectors: {exc}")
            return EXIT_SERVICE
        print("# changes against Kafka Connect")
        for change in changes:
            print(change.describe())
        return EXIT_OK
    if command == "apply":
        for change in client.apply(wanted):
            print(change.describe())
        return EXIT_OK
    if command == "status":
        healthy = True
        for connector in wanted:
            status = client.status(connector.name)
            healthy &= status.healthy
            print(f"{status.name}: connector {status.state}")
            for task in status.tasks:
                print(f"  task {task.task_id}: {task.state} on {task.worker_id}")
                if task.trace:
                    print("    " + task.trace.strip().splitlines()[0])
        return EXIT_OK if healthy else EXIT_SERVICE
    if args.all:
        return restart_all(client, wanted)
    restarted = 0
    for connector in wanted:
        status = client.status(connector.name)
        if status.failed_tasks or status.state == "FAILED":
            client.restart(connector.name, only_failed=True, include_tasks=True)
            restarted += 1
            print(f"{connector.name}: restarted {len(status.failed_tasks)} failed task(s)")
    if not restarted:
        print("no failed connector or task")
    return EXIT_OK


def restart_all(client: ConnectClient, wanted: tuple[ConnectorConfig, ...]) -> int:
    """Restart each deployed connector and every task: Connect resolves config-provider
    references when it starts a connector or task, never while they run, so this is how a
    secret rotated in Vault reaches the running sinks (docs/operations.md)."""
    restarted = 0
    for connector in wanted:
        status = client.status_if_exists(connector.name)
        if status is None:
            print(f"{connector.name}: not deployed")
            continue
        client.restart(connector.name, only_failed=False, include_tasks=True)
        restarted += 1
        print(f"{connector.name}: restarted the connector and {len(status.tasks)} task(s)")
    if not restarted:
        say("no declared connector is deployed; run 'cdc-pipelines connectors apply'")
        return EXIT_SERVICE
    return EXIT_OK
