"""``cdc-pipelines ddl plan|apply``: create or upgrade the PostgreSQL target tables."""

from __future__ import annotations

import argparse

import psycopg

from cdc_pipelines.commands.common import EXIT_OK, add_config_option, declaration, settings
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.postgres.ddl import apply_ddl, plan_pipeline_ddl


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("ddl", help="create or upgrade the PostgreSQL target tables")
    sub = parser.add_subparsers(dest="ddl_command", required=True)
    for name, text in (
        ("plan", "print the statements that would run"),
        ("apply", "run them, one transaction per table"),
    ):
        add_config_option(sub.add_parser(name, help=text))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = declaration(args)
    try:
        with psycopg.connect(settings().postgres_dsn, autocommit=True) as conn:
            plans = plan_pipeline_ddl(conn, config)
            for plan in plans:
                print(f"-- {plan.describe()}")
                for statement in plan.as_sql(conn):
                    print(f"{statement};")
                if args.ddl_command == "apply":
                    apply_ddl(conn, plan)
    except psycopg.OperationalError as exc:
        raise ServiceError(
            f"cannot reach PostgreSQL: {str(exc).strip()}; check CDC_POSTGRES_DSN"
        ) from None
    return EXIT_OK
