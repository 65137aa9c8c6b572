"""``cdc-pipelines config validate|draft``: check the declaration or draft one from a cluster."""

from __future__ import annotations

import argparse

from cdc_pipelines.commands.common import EXIT_OK, add_config_option, declaration, settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("config", help="check or draft the pipeline declaration")
    sub = parser.add_subparsers(dest="config_command", required=True)
    add_config_option(sub.add_parser("validate", help="load the declaration; exit 2 if invalid"))
    draft = sub.add_parser("draft", help="introspect a keyspace and print a first declaration")
    draft.add_argument("--keyspace", required=True)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.config_command == "validate":
        config = declaration(args)
        for table in config.tables:
            print(
                f"{table.source} → {table.target}: {len(table.columns)} columns, "
                f"{config.slices_for(table)} slices"
            )
        return EXIT_OK
    from cdc_pipelines.config_draft import draft_declaration
    from cdc_pipelines.scylla.session import cql_session

    with cql_session(settings()) as session:
        print(draft_declaration(session, args.keyspace), end="")
    return EXIT_OK
