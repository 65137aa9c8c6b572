"""``cdc-pipelines dlq inspect|replay KEYSPACE.TABLE``: a table's dead letters.

``inspect`` counts the table's dead letters (its own DLQ topic and the shared one, by the
``__connect.errors.topic`` header) and groups them by the failure Connect recorded.
``replay`` re-publishes those not replayed yet to the table's topic: a dry run unless
``--apply``. Exit 0 on success, 2 on usage or configuration errors, 3 when Kafka is
down or a topic is missing.
"""

from __future__ import annotations

import argparse
import json
import sys

from cdc_pipelines.commands.common import EXIT_OK, add_config_option, declaration, say, settings
from cdc_pipelines.kafka.dead_letters import (
    DEFAULT_TIMEOUT_S,
    DeadLetterSummary,
    TableDeadLetters,
)
from cdc_pipelines.reconcile.progress import CountProgress
from cdc_pipelines.replicated_table import resolve


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give more than 0")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("dlq", help="inspect and replay a table's dead letters")
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("inspect", "count the table's dead letters by failure reason"),
        ("replay", "re-publish the dead letters not replayed yet (dry run unless --apply)"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("table", metavar="KEYSPACE.TABLE", help="the declared source table")
        add_config_option(command)
        command.add_argument("--json", action="store_true", help="print the result as JSON")
        command.add_argument(
            "--timeout",
            type=positive,
            default=DEFAULT_TIMEOUT_S,
            metavar="SECONDS",
            help=f"give up when Kafka is silent this long (default {DEFAULT_TIMEOUT_S:g})",
        )
        if name == "replay":
            command.add_argument(
                "--apply", action="store_true", help="publish (the default only shows what would)"
            )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = declaration(args)
    table = resolve(config, args.table)
    letters = TableDeadLetters(
        settings().kafka_bootstrap_servers,
        table.source,
        table.topic,
        table.dlq_topic,
        config.connectors.dlq_topic,
        timeout_s=args.timeout,
    )
    if args.dlq_command == "inspect":
        inspection = letters.inspect()
        if args.json:
            print(json.dumps({"table": table.source, **inspection.to_dict()}, indent=2))
        else:
            print_summary(table.source, inspection.summary)
            print(f"not replayed yet: {inspection.not_replayed}")
        return EXIT_OK
    progress = CountProgress(0, sys.stderr, unit="dead letters")
    try:
        result = letters.replay(apply=args.apply, progress=progress.update)
    finally:
        progress.close()
    if args.json:
        print(json.dumps({"table": table.source, **result.to_dict()}, indent=2))
    else:
        print_summary(table.source, result.summary)
    skipped = (
        f"; {result.superseded} skipped: a newer change of their key is in the topic, and the "
        "sink would let the older one overwrite it"
        if result.superseded
        else ""
    )
    if args.apply:
        say(f"{table.source}: replayed {result.replayed} dead letter(s) to {table.topic}{skipped}")
        if result.replayed:
            # The sink upserts without a version guard; the replay skipped letters a newer
            # change had replaced when it looked, but one written since (or a letter without
            # its change's position) is settled only from the source.
            unchecked = (
                f" ({result.unguarded} carried no position of their change and were replayed "
                "unchecked)"
                if result.unguarded
                else ""
            )
            say(
                f"{table.source}: once the sink has applied them, run 'cdc-pipelines "
                f"reconcile {table.source} --repair' to settle any change written while the "
                f"replay ran{unchecked}"
            )
    else:
        say(
            f"{table.source}: {result.to_replay} dead letter(s) would be replayed to "
            f"{table.topic}{skipped} (dry run; publish with --apply)"
        )
    return EXIT_OK


def print_summary(source: str, summary: DeadLetterSummary) -> None:
    topics = ", ".join(f"{t}: {n}" for t, n in sorted(summary.by_topic.items()))
    print(f"{source}: {summary.count} dead letter(s) ({topics})")
    if summary.count:
        print(f"oldest {summary.to_dict()['oldest']}, newest {summary.to_dict()['newest']}")
    for reason in summary.reasons:
        print(f"{reason.count:>8}  {reason.reason.describe()}")
        for key in reason.sample_keys:
            print(f"          key {key}")
    if summary.replayed_before:
        print(f"{summary.replayed_before} failed again after an earlier replay")
