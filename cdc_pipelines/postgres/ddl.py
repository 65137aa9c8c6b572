"""Target DDL: create each replicated table, and plan safe upgrades of a live one.

A plan compares the declaration with the live catalog and only ever adds: a
missing schema, table or column. Anything that would lose data — dropping a
column, changing a type, changing the primary key — is refused with a
:class:`ConfigError` before any statement runs. :func:`apply_ddl` runs a plan in
one transaction, so a failure leaves the table as it was. Planning twice after
applying plans nothing. Every identifier is composed with ``psycopg.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from cdc_pipelines.config import PG_TYPE_SYNTAX, PipelineConfig, TableSpec
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.postgres.types import VERSION_COLUMN_PG_TYPE, PgType, column_pg_type

# A DDL statement waits at most this long for a lock (e.g. behind the sink's writes).
DDL_LOCK_TIMEOUT_MS = 10_000

_LIVE_COLUMNS = sql.SQL(
    """
    SELECT c.column_name, pg_catalog.format_type(a.atttypid, a.atttypmod)
    FROM information_schema.columns AS c
    JOIN pg_catalog.pg_attribute AS a
      ON a.attrelid = pg_catalog.format('%I.%I', c.table_schema, c.table_name)::regclass
     AND a.attname = c.column_name
    WHERE c.table_schema = {schema} AND c.table_name = {table}
    ORDER BY c.ordinal_position
    """
)
_LIVE_PRIMARY_KEY = sql.SQL(
    """
    SELECT a.attname
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_attribute AS a
      ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = {relation} AND i.indisprimary
    ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)
    """
)
_RELATION_KIND = sql.SQL(
    "SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = pg_catalog.to_regclass({name})"
)
_SCHEMA_EXISTS = sql.SQL("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {schema}")
_ORDINARY_TABLE_KINDS = ("r", "p")


@dataclass(frozen=True)
class TargetColumn:
    """A column of the target table as the declaration wants it."""

    name: str
    pg_type: PgType
    in_primary_key: bool = False


@dataclass(frozen=True)
class LiveTable:
    """What the catalog says about an existing target table."""

    columns: tuple[tuple[str, str], ...]
    primary_key: tuple[str, ...]

    def type_of(self, name: str) -> str | None:
        return dict(self.columns).get(name)


@dataclass(frozen=True)
class DdlPlan:
    """The statements that bring one target table up to the declaration, and why."""

    schema: str
    table: str
    statements: tuple[sql.Composed, ...]
    summary: tuple[str, ...]

    @property
    def is_empty(self) -> bool:
        return not self.statements

    @property
    def qualified_name(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    def describe(self) -> str:
        """One readable line, e.g. ``"shop"."orders": add column "note" text``."""
        return f"{self.qualified_name}: {'; '.join(self.summary) if self.summary else 'up to date'}"

    def as_sql(self, conn: psycopg.Connection) -> list[str]:
        """The statements as text (for a dry run or a review)."""
        return [statement.as_string(conn) for statement in self.statements]


def quote_ident(name: str) -> str:
    """PostgreSQL's quoting of an identifier, for messages (statements use ``sql.Identifier``)."""
    return '"' + name.replace('"', '""') + '"'


def target_columns(table: TableSpec, version_column: str) -> tuple[TargetColumn, ...]:
    """The replicated columns in declaration order, then the version column."""
    keys = set(table.primary_key)
    columns = [
        TargetColumn(c.name, column_pg_type(table, c), c.name in keys)
        for c in table.replicated_columns
    ]
    columns.append(TargetColumn(version_column, PgType(VERSION_COLUMN_PG_TYPE)))
    return tuple(columns)


def create_statements(table: TableSpec, version_column: str) -> tuple[sql.Composed, ...]:
    """``CREATE SCHEMA IF NOT EXISTS`` and ``CREATE TABLE IF NOT EXISTS`` for a new target."""
    schema = sql.Identifier(table.target_schema)
    relation = sql.Identifier(table.target_schema, table.target_table)
    definitions = [
        sql.SQL("{} {}").format(sql.Identifier(c.name), _type_sql(c.pg_type, table))
        for c in target_columns(table, version_column)
    ]
    definitions.append(
        sql.SQL("PRIMARY KEY ({})").format(
            sql.SQL(", ").join(sql.Identifier(name) for name in table.primary_key)
        )
    )
    return (
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            relation, sql.SQL(", ").join(definitions)
        ),
    )


def read_live_table(conn: psycopg.Connection, schema: str, table: str) -> LiveTable | None:
    """The live table's columns (canonical type text) and primary key, or None if it is absent."""
    name = f"{quote_ident(schema)}.{quote_ident(table)}"
    row = conn.execute(_RELATION_KIND.format(name=sql.Literal(name))).fetchone()
    if row is None:
        return None
    if row[0] not in _ORDINARY_TABLE_KINDS:
        raise ConfigError(
            f"target {name} exists but is not a table (relkind {row[0]!r}); rename it or point "
            "the table's target elsewhere in pipeline.yaml"
        )
    columns = conn.execute(
        _LIVE_COLUMNS.format(schema=sql.Literal(schema), table=sql.Literal(table))
    ).fetchall()
    key = conn.execute(
        _LIVE_PRIMARY_KEY.format(
            relation=sql.SQL("pg_catalog.to_regclass({})").format(sql.Literal(name))
        )
    ).fetchall()
    return LiveTable(
        columns=tuple((str(n), str(t)) for n, t in columns),
        primary_key=tuple(str(k) for (k,) in key),
    )


def plan_ddl(conn: psycopg.Connection, table: TableSpec, version_column: str) -> DdlPlan:
    """Plan the DDL for one table; refuses data-losing changes with a :class:`ConfigError`."""
    schema, name = table.target_schema, table.target_table
    # Planning only reads; end the read transaction if we are the ones who opened it,
    # so apply_ddl's transaction is a real one and not a savepoint.
    opened_here = not conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE
    try:
        schema_exists = conn.execute(_SCHEMA_EXISTS.format(schema=sql.Literal(schema))).fetchone()
        live = read_live_table(conn, schema, name) if schema_exists else None
    finally:
        if opened_here:
            conn.rollback()
    if live is None:
        return _creation_plan(table, version_column, schema_exists=schema_exists is not None)

    wanted = target_columns(table, version_column)
    problems = _data_losing_changes(table, wanted, live)
    if problems:
        target = f"{quote_ident(schema)}.{quote_ident(name)}"
        raise ConfigError(
            f"target table {target} (from {table.source}) cannot follow pipeline.yaml without "
            "losing data; nothing was changed:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    relation = sql.Identifier(schema, name)
    statements: list[sql.Composed] = []
    summary: list[str] = []
    for column in wanted:
        if live.type_of(column.name) is None:
            statements.append(
                sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                    relation, sql.Identifier(column.name), _type_sql(column.pg_type, table)
                )
            )
            summary.append(f"add column {quote_ident(column.name)} {column.pg_type}")
    return DdlPlan(schema, name, tuple(statements), tuple(summary))


def _creation_plan(table: TableSpec, version_column: str, *, schema_exists: bool) -> DdlPlan:
    create_schema, create_table = create_statements(table, version_column)
    statements = [create_table]
    summary = []
    if not schema_exists:
        statements.insert(0, create_schema)
        summary.append(f"create schema {quote_ident(table.target_schema)}")
    key = ", ".join(quote_ident(k) for k in table.primary_key)
    columns = len(target_columns(table, version_column))
    summary.append(f"create table with {columns} columns, primary key ({key})")
    return DdlPlan(table.target_schema, table.target_table, tuple(statements), tuple(summary))


def plan_pipeline_ddl(conn: psycopg.Connection, config: PipelineConfig) -> tuple[DdlPlan, ...]:
    """Plan every declared table; the first refusal stops planning."""
    return tuple(plan_ddl(conn, t, config.defaults.version_column) for t in config.tables)


def apply_ddl(conn: psycopg.Connection, plan: DdlPlan) -> None:
    """Run a plan in one transaction: all statements take effect, or none does.

    On an idle connection the transaction is committed here; inside a transaction
    the caller already opened, the plan runs in a savepoint and the caller commits.
    """
    if plan.is_empty:
        return
    with conn.transaction():
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{DDL_LOCK_TIMEOUT_MS}ms"))
        )
        for statement in plan.statements:
            conn.execute(statement)


def _data_losing_changes(
    table: TableSpec, wanted: tuple[TargetColumn, ...], live: LiveTable
) -> list[str]:
    problems: list[str] = []
    wanted_names = {c.name for c in wanted}
    for column in wanted:
        current = live.type_of(column.name)
        if current is not None and current != column.pg_type.sql:
            problems.append(
                f"column {quote_ident(column.name)} is {current} in PostgreSQL but declared "
                f"{column.pg_type}; changing it could lose data. Migrate it yourself (ALTER "
                f"TABLE … ALTER COLUMN … TYPE … USING …) or set target_type: {current!r} on "
                "the column in pipeline.yaml"
            )
    for name, current in live.columns:
        if name not in wanted_names:
            problems.append(
                f"column {quote_ident(name)} ({current}) exists in PostgreSQL but is not "
                f"declared for {table.source} (or is excluded); dropping it would lose its data. "
                "Declare it again, or drop it yourself (ALTER TABLE … DROP COLUMN …)"
            )
    if live.primary_key != table.primary_key:
        current_key = ", ".join(quote_ident(k) for k in live.primary_key) or "none"
        declared_key = ", ".join(quote_ident(k) for k in table.primary_key)
        problems.append(
            f"the primary key is ({current_key}) in PostgreSQL but declared ({declared_key}); "
            "a key change needs a new table: create it under another target name and backfill"
        )
    return problems


def _type_sql(pg_type: PgType, table: TableSpec) -> sql.SQL:
    # Types come from our own mapping or a target_type checked at load; check again
    # here because this text is pasted into DDL rather than quoted.
    if not PG_TYPE_SYNTAX.match(pg_type.sql):
        raise ConfigError(
            f"{table.source}: {pg_type.sql!r} is not a plain PostgreSQL type; fix target_type"
        )
    return sql.SQL(pg_type.sql)
