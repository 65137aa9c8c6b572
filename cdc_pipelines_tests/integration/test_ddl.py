"""Target DDL against a real PostgreSQL: hostile names, idempotence, safe upgrades and refusals.

Each test works in its own uniquely named schema (created by the DDL under test)
and drops it at the end; no shared table is touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.config import PipelineConfig, TableSpec, parse_config
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.postgres.ddl import DdlPlan, apply_ddl, plan_ddl, read_live_table
from cdc_pipelines.postgres.types import column_pg_type

VERSION = "_cdc_version_us"

HOSTILE_COLUMNS = """\
      user: int
      "Mixed Case": text
      "ключ": timeuuid
      order: decimal
      'say "hi"': text
      "select": bigint
      c_smallint: smallint
      c_tinyint: tinyint
      c_varint: varint
      c_float: float
      c_double: double
      c_boolean: boolean
      c_ascii: ascii
      c_varchar: varchar
      c_blob: blob
      c_uuid: uuid
      c_timestamp: timestamp
      c_date: date
      c_time: time
      c_duration: duration
      c_inet: inet
      c_list: list<int>
      c_set: set<text>
      c_list_uuid: list<uuid>
      c_map: map<text, int>
      c_tuple: tuple<int, text>
      c_udt: frozen<address>
      amount: {type: decimal, target_type: 'NUMERIC(38, 10)'}
      at: {type: timestamp, target_type: timestamptz(3)}
"""


def declaration(schema: str, columns: str, keys: str, table: str = "order Lines") -> PipelineConfig:
    text = (
        "user_types:\n  address: {street: text, zip: int}\n"
        "tables:\n  - source: demo.t\n"
        f"    target: {_yaml_quote(f'{schema}.{table}')}\n"
        f"    {keys}\n    columns:\n{columns}"
    )
    return parse_config(text, "test.yaml", {})


def _yaml_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@pytest.fixture
def schema(postgres_dsn: str, unique_name: str) -> Iterator[str]:
    """A hostile schema name owned by this test; the DDL creates it, the fixture drops it."""
    name = f'{unique_name} "Schéma" Ünï'
    yield name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres_dsn) as connection:
        yield connection


def plan_and_apply(conn: psycopg.Connection, table: TableSpec) -> DdlPlan:
    plan = plan_ddl(conn, table, VERSION)
    apply_ddl(conn, plan)
    return plan


def catalog(conn: psycopg.Connection, table: TableSpec) -> object:
    live = read_live_table(conn, table.target_schema, table.target_table)
    conn.rollback()
    return live


def rows(conn: psycopg.Connection, table: TableSpec) -> list[tuple[object, ...]]:
    relation = sql.Identifier(table.target_schema, table.target_table)
    result = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(relation)).fetchall()
    conn.rollback()
    return result


def insert(conn: psycopg.Connection, table: TableSpec, values: dict[str, object]) -> None:
    relation = sql.Identifier(table.target_schema, table.target_table)
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            relation,
            sql.SQL(", ").join(sql.Identifier(k) for k in values),
            sql.SQL(", ").join(sql.Placeholder() for _ in values),
        ),
        list(values.values()),
    )
    conn.commit()


def test_hostile_table_is_created_then_plans_nothing(conn: psycopg.Connection, schema: str) -> None:
    table = declaration(
        schema, HOSTILE_COLUMNS, 'partition_key: [user, "Mixed Case"]\n    clustering_key: ["ключ"]'
    ).tables[0]

    first = plan_and_apply(conn, table)
    assert first.summary[0].startswith("create schema")

    live = read_live_table(conn, table.target_schema, table.target_table)
    conn.rollback()
    assert live is not None
    assert live.primary_key == ("user", "Mixed Case", "ключ")
    expected = [(c.name, column_pg_type(table, c).sql) for c in table.replicated_columns]
    assert list(live.columns) == [*expected, (VERSION, "bigint")]
    assert live.type_of("amount") == "numeric(38,10)"
    assert live.type_of("at") == "timestamp(3) with time zone"
    assert live.type_of("c_udt") == "jsonb"

    second = plan_ddl(conn, table, VERSION)
    assert second.is_empty
    assert second.describe().endswith("up to date")


def test_table_is_usable_with_quoted_identifiers(conn: psycopg.Connection, schema: str) -> None:
    table = declaration(schema, HOSTILE_COLUMNS, "partition_key: [user]").tables[0]
    plan_and_apply(conn, table)
    insert(conn, table, {"user": 1, 'say "hi"': "hello", "order": "12.50", VERSION: 1_000_000})
    (row,) = rows(conn, table)
    assert row[0] == 1 and "hello" in row


def test_existing_schema_only_gets_the_table(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.commit()
    table = declaration(schema, "      id: int\n", "partition_key: [id]").tables[0]
    plan = plan_ddl(conn, table, VERSION)
    assert len(plan.statements) == 1
    assert plan.summary == ('create table with 2 columns, primary key ("id")',)


def test_new_declared_column_is_added_and_rows_are_kept(
    conn: psycopg.Connection, schema: str
) -> None:
    v1 = declaration(schema, "      id: int\n      note: text\n", "partition_key: [id]").tables[0]
    plan_and_apply(conn, v1)
    insert(conn, v1, {"id": 7, "note": "kept", VERSION: 5})

    v2 = declaration(
        schema,
        '      id: int\n      note: text\n      "Added Col": list<int>\n',
        "partition_key: [id]",
    ).tables[0]
    plan = plan_and_apply(conn, v2)
    assert plan.summary == ('add column "Added Col" integer[]',)

    live = catalog(conn, v2)
    assert live is not None and live.type_of("Added Col") == "integer[]"  # type: ignore[attr-defined]
    assert rows(conn, v2) == [(7, "kept", 5, None)]
    assert plan_ddl(conn, v2, VERSION).is_empty


def test_type_change_is_refused_and_nothing_is_written(
    conn: psycopg.Connection, schema: str
) -> None:
    v1 = declaration(schema, "      id: int\n      total: decimal\n", "partition_key: [id]").tables[
        0
    ]
    plan_and_apply(conn, v1)
    insert(conn, v1, {"id": 1, "total": "9.99", VERSION: 1})
    before = catalog(conn, v1)

    # The new column would be addable, but the type change poisons the whole plan.
    v2 = declaration(
        schema, "      id: int\n      total: double\n      extra: text\n", "partition_key: [id]"
    ).tables[0]
    with pytest.raises(ConfigError) as caught:
        plan_ddl(conn, v2, VERSION)
    message = str(caught.value)
    assert "order Lines" in message and "demo.t" in message
    assert 'column "total" is numeric in PostgreSQL but declared double precision' in message
    assert "target_type: 'numeric'" in message
    assert "nothing was changed" in message

    assert catalog(conn, v1) == before
    assert rows(conn, v1) == [(1, Decimal("9.99"), 1)]


def test_dropping_a_column_is_refused(conn: psycopg.Connection, schema: str) -> None:
    v1 = declaration(
        schema, "      id: int\n      legacy: text\n      keep: int\n", "partition_key: [id]"
    ).tables[0]
    plan_and_apply(conn, v1)
    insert(conn, v1, {"id": 1, "legacy": "precious", "keep": 2})
    before = catalog(conn, v1)

    v2 = declaration(schema, "      id: int\n      keep: int\n", "partition_key: [id]").tables[0]
    with pytest.raises(ConfigError, match=r'column "legacy" \(text\) exists in PostgreSQL'):
        plan_ddl(conn, v2, VERSION)
    excluded = declaration(
        schema,
        "      id: int\n      legacy: text\n      keep: int\n",
        "partition_key: [id]\n    exclude: [legacy]",
    ).tables[0]
    with pytest.raises(ConfigError, match=r"ALTER TABLE … DROP COLUMN"):
        plan_ddl(conn, excluded, VERSION)

    assert catalog(conn, v1) == before
    assert rows(conn, v1) == [(1, "precious", 2, None)]


def test_primary_key_change_is_refused(conn: psycopg.Connection, schema: str) -> None:
    v1 = declaration(schema, "      id: int\n      ck: int\n", "partition_key: [id]").tables[0]
    plan_and_apply(conn, v1)
    before = catalog(conn, v1)
    v2 = declaration(
        schema, "      id: int\n      ck: int\n", "partition_key: [id]\n    clustering_key: [ck]"
    ).tables[0]
    with pytest.raises(ConfigError, match=r'primary key is \("id"\) in PostgreSQL but declared'):
        plan_ddl(conn, v2, VERSION)
    assert catalog(conn, v1) == before


def test_apply_is_all_or_nothing(conn: psycopg.Connection, schema: str) -> None:
    table = declaration(schema, "      id: int\n", "partition_key: [id]").tables[0]
    plan_and_apply(conn, table)
    before = catalog(conn, table)
    relation = sql.Identifier(table.target_schema, table.target_table)
    broken = DdlPlan(
        table.target_schema,
        table.target_table,
        (
            sql.SQL("ALTER TABLE {} ADD COLUMN first_ok text").format(relation),
            sql.SQL("ALTER TABLE {} ADD COLUMN second_bad no_such_type").format(relation),
        ),
        ("add two columns",),
    )
    with pytest.raises(psycopg.errors.UndefinedObject):
        apply_ddl(conn, broken)
    conn.rollback()
    assert catalog(conn, table) == before


def test_a_view_in_the_way_is_refused(conn: psycopg.Connection, schema: str) -> None:
    table = declaration(schema, "      id: int\n", "partition_key: [id]").tables[0]
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    conn.execute(
        sql.SQL("CREATE VIEW {} AS SELECT 1 AS id").format(
            sql.Identifier(table.target_schema, table.target_table)
        )
    )
    conn.commit()
    with pytest.raises(ConfigError, match=r"exists but is not a table"):
        plan_ddl(conn, table, VERSION)
