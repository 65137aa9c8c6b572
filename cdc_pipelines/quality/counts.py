"""Row counts of a replicated table on both sides: exact when cheap, an estimate otherwise.

PostgreSQL's estimate is ``pg_class.reltuples``; ScyllaDB's is ``system.size_estimates``
(partitions, which equal rows only without a clustering key). Small tables are counted
exactly, each count under a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.scylla.session import quote_cql

EXACT_COUNT_UP_TO = 200_000
"""Tables estimated at or below this many rows are counted exactly."""
COUNT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class RowCount:
    """How many rows a table holds, and how that was found (``rows`` None: unknown)."""

    rows: int | None
    exact: bool
    method: str


def target_row_count(
    conn: psycopg.Connection[Any], schema: str, table: str, exact_up_to: int = EXACT_COUNT_UP_TO
) -> RowCount:
    """``reltuples`` of ``schema.table``; an exact COUNT when small or never analyzed."""
    row = conn.execute(
        "SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    ).fetchone()
    if row is None:
        raise ServiceError(
            f"PostgreSQL table {schema}.{table} does not exist; run the DDL "
            "('cdc-pipelines ddl apply') before the sink writes to it"
        )
    estimate = float(row[0])
    if estimate > exact_up_to:
        return RowCount(int(estimate), exact=False, method="pg_class.reltuples")
    timeout_ms = int(COUNT_TIMEOUT_S * 1000)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(timeout_ms))
            )
            counted = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchone()
    except psycopg.errors.QueryCanceled:
        if estimate >= 0:
            return RowCount(int(estimate), exact=False, method="pg_class.reltuples")
        return RowCount(None, exact=False, method=f"COUNT timed out after {COUNT_TIMEOUT_S:.0f}s")
    return RowCount(int(counted[0]) if counted else 0, exact=True, method="COUNT(*)")


def source_row_count(
    session: Any, table: TableSpec, exact_up_to: int = EXACT_COUNT_UP_TO
) -> RowCount:
    """``system.size_estimates`` for big tables, an exact COUNT for small or unestimated ones."""
    rows = session.execute(
        "SELECT partitions_count FROM system.size_estimates "
        "WHERE keyspace_name = %s AND table_name = %s",
        (table.keyspace, table.table),
    )
    partitions = sum(int(r[0]) for r in rows)
    if partitions > exact_up_to:
        if not table.clustering_key:
            return RowCount(partitions, exact=False, method="system.size_estimates")
        return RowCount(
            None,
            exact=False,
            method=f"too big to count ({partitions} partitions) and rows per partition are unknown",
        )
    # Identifiers are quoted by quote_cql.
    query = f"SELECT COUNT(*) FROM {quote_cql(table.keyspace)}.{quote_cql(table.table)}"  # noqa: S608
    try:
        counted = session.execute(query, timeout=COUNT_TIMEOUT_S).one()
    except Exception as exc:  # the driver raises OperationTimedOut, ReadTimeout, …
        if partitions and not table.clustering_key:
            return RowCount(partitions, exact=False, method="system.size_estimates")
        return RowCount(None, exact=False, method=f"COUNT failed: {type(exc).__name__}")
    return RowCount(int(counted[0]), exact=True, method="COUNT(*)")
