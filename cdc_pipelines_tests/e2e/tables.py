"""A declared table on both sides for an end-to-end test: created in ScyllaDB (its keyspace)
and PostgreSQL (its DDL), and dropped with them afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.scylla.schema import create_source_tables


@contextmanager
def both_sides(
    cql_session: object, postgres_dsn: str, config: PipelineConfig, table: TableSpec
) -> Iterator[None]:
    """The declaration's source tables and ``table``'s target; the source keyspace and the
    target schema are dropped when the block ends."""
    create_source_tables(cql_session, config)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
    try:
        yield
    finally:
        cql_session.execute(f'DROP KEYSPACE IF EXISTS "{table.keyspace}"')  # type: ignore[attr-defined]
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(table.target_schema)
                )
            )
