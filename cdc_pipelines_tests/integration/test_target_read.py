"""The target index reads PostgreSQL's numeric columns into the same canonical form as the source.

Decimals and varints come out of PostgreSQL through ``trim_scale`` and skip client-side
normalization; hypothesis checks that the result still equals the canonical form of the
driver's values, on the devstack's PostgreSQL; so do the natively typed columns.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.arrow_read import typed_select
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.postgres.target_index import (
    build_target_index,
    read_slice_index,
    select_expression,
)
from cdc_pipelines.ring.slices import slice_id
from cdc_pipelines.rows.canonical import ROW_HASH_COLUMN, CanonicalSchema, from_python_rows
from cdc_pipelines_tests.declarations import replicated
from cdc_pipelines_tests.unit.test_canonical import VALUE_STRATEGIES, pg_text
from cdc_pipelines_tests.unit.test_tokens import KEY_VALUES

VERSION = "_cdc_version_us"
LARGE_FILL = (
    "INSERT INTO {t} (k, amount, big, note, {v}) "
    "SELECT g, g, g, repeat('x', 40), 7 FROM generate_series(1, {rows}) AS g"
)
# Each example writes and indexes a table: no deadline, and the fixtures are per test.
AGAINST_POSTGRES = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COLUMNS = {"k": "decimal", "amount": "decimal", "big": "varint", "note": "text"}


@pytest.fixture
def numbers(pg_schema: str, postgres_dsn: str) -> TableSpec:
    table = TableSpec.model_validate(
        {
            "source": "ks.numbers",
            "target": f"{pg_schema}.numbers",
            "partition_key": ["k"],
            "columns": COLUMNS,
        }
    )
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for statement in create_statements(table, VERSION):
            conn.execute(statement)
    return table


def _fill(dsn: str, table: TableSpec, rows: list[tuple[Any, ...]]) -> None:
    relation = sql.Identifier(table.target_schema, table.target_table)
    with psycopg.connect(dsn) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(relation))
        with (
            conn.cursor() as cursor,
            cursor.copy(
                sql.SQL("COPY {} (k, amount, big, note, {}) FROM STDIN").format(
                    relation, sql.Identifier(VERSION)
                )
            ) as copy,
        ):
            for row in rows:
                copy.write_row(row)


def _run(dsn: str, table: TableSpec, *statements: str, **literals: object) -> None:
    """SQL on the target table: ``{t}`` is the table, ``{v}`` the version column, any other
    ``{name}`` a literal given by keyword."""
    names: dict[str, sql.Composable] = {
        "t": sql.Identifier(table.target_schema, table.target_table),
        "v": sql.Identifier(VERSION),
        **{name: sql.Literal(value) for name, value in literals.items()},
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(sql.SQL(statement).format(**names))  # type: ignore[arg-type]


def _index(dsn: str, table: TableSpec, directory: Path) -> tuple[CanonicalSchema, Any]:
    schema = replicated(table).canonical
    build_target_index(dsn, replicated(table, slices=1), directory)
    indexed = read_slice_index(directory, slice_id(0, 1), schema)
    return schema, indexed.drop_columns([ROW_HASH_COLUMN]).sort_by("k")


DECIMALS = KEY_VALUES["decimal"]
ROWS = st.lists(
    st.tuples(
        DECIMALS,
        st.none()
        | DECIMALS
        | st.sampled_from([Decimal("0.000"), Decimal("-0.50"), Decimal("100.00")]),
        st.none() | KEY_VALUES["varint"],
        st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5),
    ),
    max_size=40,
    unique_by=lambda row: row[0].as_integer_ratio(),  # numeric keys equal by value
)


def test_numeric_columns_read_like_the_source(
    numbers: TableSpec, postgres_dsn: str, tmp_path: Path
) -> None:
    @settings(AGAINST_POSTGRES, max_examples=30)
    @given(rows=ROWS)
    def check(rows: list[tuple[Any, ...]]) -> None:
        _fill(postgres_dsn, numbers, [(*r, 7) for r in rows])

        schema, target = _index(postgres_dsn, numbers, tmp_path)

        source = from_python_rows([(*r, 7) for r in rows], schema)
        expected = source.to_pylist()
        assert sorted(target.to_pylist(), key=repr) == sorted(expected, key=repr)

    check()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("amount", "NaN", "'NaN' is not a finite number"),
        ("big", "12.5", "'12.5' is not an integer"),
    ],
)
def test_non_cassandra_numbers_in_the_target_are_named(
    numbers: TableSpec, postgres_dsn: str, tmp_path: Path, column: str, value: str, message: str
) -> None:
    row = {"k": Decimal(1), "amount": None, "big": None, "note": None}
    row[column] = Decimal(value)
    _fill(postgres_dsn, numbers, [(*row.values(), 7)])

    with pytest.raises(ReconcileError, match=rf"column '{column}'.*{message}"):
        _index(postgres_dsn, numbers, tmp_path)


def test_bad_data_early_in_a_large_table_is_reported_as_itself(
    numbers: TableSpec, postgres_dsn: str, tmp_path: Path
) -> None:
    """Indexing stops at the first bad batch; the read, still streaming, is cancelled and must
    not mask why."""
    _fill(postgres_dsn, numbers, [(Decimal(0), Decimal("NaN"), None, None, 7)])
    _run(postgres_dsn, numbers, LARGE_FILL, rows=2_000_000)

    with pytest.raises(ReconcileError, match=r"column 'amount'.*'NaN' is not a finite number"):
        _index(postgres_dsn, numbers, tmp_path)


# Every CQL type the typed read takes in its native PostgreSQL type (arrow_read).
NATIVE_COLUMNS = {
    "ti": "tinyint",
    "si": "smallint",
    "i": "int",
    "f": "float",
    "d": "double",
    "b": "boolean",
    "t": "text",
    "a": "ascii",
    "bl": "blob",
    "u": "uuid",
    "tu": "timeuuid",
    "ts": "timestamp",
    "dt": "date",
    "tm": "time",
}


def _native_table(pg_schema: str, dsn: str, name: str, precision: str = "ms") -> TableSpec:
    table = TableSpec.model_validate(
        {
            "source": f"ks.{name}",
            "target": f"{pg_schema}.{name}",
            "partition_key": ["k"],
            "columns": {"k": "bigint", **NATIVE_COLUMNS},
            "tolerances": {"timestamp_precision": precision},
        }
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in create_statements(table, VERSION):
            conn.execute(statement)
    return table


def _copy_text(dsn: str, table: TableSpec, rows: list[list[str | None]]) -> None:
    relation = sql.Identifier(table.target_schema, table.target_table)
    columns = sql.SQL(", ").join(sql.Identifier(n) for n in ["k", *NATIVE_COLUMNS, VERSION])
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(sql.SQL("TRUNCATE {}").format(relation))
        with (
            conn.cursor() as cursor,
            cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(relation, columns)) as copy,
        ):
            for row in rows:
                copy.write_row(row)


# PostgreSQL text cannot hold NUL; Cassandra's can (the sink refuses such rows).
_STORABLE = {
    **VALUE_STRATEGIES,
    "text": st.text(st.characters(codec="utf-8", exclude_characters="\x00")),
    "ascii": st.text(st.characters(min_codepoint=1, max_codepoint=127)),
}


def _stored_text(cql_name: str, value: object) -> str | None:
    """The value as COPY input for the column the DDL made (time is bigint nanoseconds)."""
    if value is None:
        return None
    if cql_name == "time":
        return str(value.nanosecond_time)  # type: ignore[attr-defined]
    return pg_text(cql_name, value)


NATIVE_ROWS = st.lists(
    st.tuples(*(st.none() | _STORABLE[cql] for cql in NATIVE_COLUMNS.values())),
    max_size=30,
)


@pytest.mark.parametrize("precision", ["ms", "us"])
def test_native_columns_read_like_the_source(
    pg_schema: str, postgres_dsn: str, tmp_path: Path, precision: str
) -> None:
    """Integers, floats (NaN included), booleans, text, bytea, uuids, timestamps, dates and times
    come over binary COPY in their own types; the index must hold the source's canonical form,
    compared timestamps and times floored to the declared precision."""
    table = _native_table(pg_schema, postgres_dsn, f"native_{precision}", precision)
    schema = replicated(table).canonical

    @settings(AGAINST_POSTGRES, max_examples=25)
    @given(rows=NATIVE_ROWS)
    def check(rows: list[tuple[Any, ...]]) -> None:
        keyed = [(k, *values, 7) for k, values in enumerate(rows)]
        cql_types = ["bigint", *NATIVE_COLUMNS.values(), "bigint"]
        _copy_text(
            postgres_dsn,
            table,
            [[_stored_text(c, v) for c, v in zip(cql_types, row, strict=True)] for row in keyed],
        )
        build_target_index(postgres_dsn, replicated(table, slices=1), tmp_path)
        target = read_slice_index(tmp_path, slice_id(0, 1), schema).drop_columns([ROW_HASH_COLUMN])

        expected = from_python_rows(keyed, schema)
        assert target.schema.equals(expected.schema)
        assert [repr(r) for r in target.sort_by("k").to_pylist()] == [
            repr(r) for r in pa.Table.from_batches([expected]).sort_by("k").to_pylist()
        ]

    check()


def test_target_timestamp_without_zone_and_time_columns_are_read_natively(
    pg_schema: str, postgres_dsn: str, tmp_path: Path
) -> None:
    """A hand-made target may hold a timestamp without zone (read as UTC) or a PostgreSQL time
    (the DDL makes bigint nanoseconds); both come in their own types, floored to ms."""
    table = _native_table(pg_schema, postgres_dsn, "naive")
    _run(
        postgres_dsn,
        table,
        "ALTER TABLE {t} ALTER COLUMN ts TYPE timestamp USING ts AT TIME ZONE 'UTC', "
        "ALTER COLUMN tm TYPE time USING NULL",
        "INSERT INTO {t} (k, ts, tm, {v}) "
        "VALUES (1, '2026-01-02 03:04:05.678901', '23:59:59.999999', 7)",
    )
    schema = replicated(table).canonical

    build_target_index(postgres_dsn, replicated(table, slices=1), tmp_path)

    row = read_slice_index(tmp_path, slice_id(0, 1), schema).to_pylist()[0]
    assert row["ts"] == dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert row["tm"] == dt.time(23, 59, 59, 999000)


def test_only_exactly_typed_columns_skip_the_text_round_trip(pg_schema: str) -> None:
    table = TableSpec.model_validate(
        {
            "source": "ks.mixed",
            "target": f"{pg_schema}.mixed",
            "partition_key": ["k"],
            "columns": {"k": "bigint", "n": "int", "amount": "decimal", "tags": "list<text>"},
        }
    )
    schema = replicated(table).canonical
    types = {"k": "int8", "n": "int8", "amount": "numeric", "tags": "_text", VERSION: "int8"}

    query = typed_select(table, schema, types, select_expression)

    assert query.startswith('SELECT "k", ("n")::text AS "n", (trim_scale("amount"))::text')
    assert '(to_json("tags"))::text AS "tags"' in query
    assert query.endswith(f'"{VERSION}" FROM "{pg_schema}"."mixed"')


def test_an_unreachable_postgres_and_a_missing_table_are_named(
    numbers: TableSpec, postgres_dsn: str, tmp_path: Path
) -> None:

    closed_port = "postgresql://cdc:cdc@127.0.0.1:1/cdc"
    with pytest.raises(ServiceError, match=r"cannot connect to PostgreSQL.*CDC_POSTGRES_DSN"):
        build_target_index(closed_port, replicated(numbers, slices=1), tmp_path)

    missing = numbers.model_copy(update={"target": f"{numbers.target_schema}.nowhere"})
    with pytest.raises(ServiceError, match=r"\.nowhere does not exist.*ddl apply"):
        build_target_index(postgres_dsn, replicated(missing, slices=1), tmp_path)
    assert not list(tmp_path.glob("slice=*"))


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("ti", "300", r"column 'ti' \(tinyint\) has Arrow type int16.*int8"),
        # ADBC shifts PostgreSQL's infinities into ordinary-looking numbers.
        ("ts", "infinity", r"column 'ts' \(timestamp\).*infinity"),
        ("dt", "-infinity", r"column 'dt' \(date\).*infinity"),
    ],
    ids=["tinyint-overflow", "timestamp-infinity", "date-infinity"],
)
def test_native_values_the_source_cannot_hold_are_named(
    pg_schema: str, postgres_dsn: str, tmp_path: Path, column: str, value: str, message: str
) -> None:
    table = _native_table(pg_schema, postgres_dsn, "unholdable")
    _run(
        postgres_dsn,
        table,
        f"INSERT INTO {{t}} (k, {column}, {{v}}) VALUES (1, {{value}}, 7)",
        value=value,
    )

    with pytest.raises(ReconcileError, match=message):
        build_target_index(postgres_dsn, replicated(table, slices=1), tmp_path)


def test_a_time_of_24_00_is_named(pg_schema: str, postgres_dsn: str, tmp_path: Path) -> None:
    """PostgreSQL's time accepts 24:00:00; a CQL time stops at 23:59:59.999999999."""
    table = _native_table(pg_schema, postgres_dsn, "midnight")
    _run(
        postgres_dsn,
        table,
        "ALTER TABLE {t} ALTER COLUMN tm TYPE time USING NULL",
        "INSERT INTO {t} (k, tm, {v}) VALUES (1, '24:00:00', 7)",
    )

    with pytest.raises(ReconcileError, match=r"column 'tm' \(time\).*24:00:00"):
        build_target_index(postgres_dsn, replicated(table, slices=1), tmp_path)


def test_a_connection_lost_mid_read_is_named(
    numbers: TableSpec, postgres_dsn: str, tmp_path: Path
) -> None:
    _run(postgres_dsn, numbers, LARGE_FILL, rows=1_000_000)
    relation = sql.Identifier(numbers.target_schema, numbers.target_table)

    terminated = []

    def end_the_reading_backend(rows: int) -> None:
        if terminated:
            return
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%FROM {relation.as_string()}%",),
            ).fetchall()
        terminated.append(len(ended))

    with pytest.raises(ServiceError, match=r"reading .*numbers from PostgreSQL failed"):
        build_target_index(
            postgres_dsn, replicated(numbers, slices=1), tmp_path, on_rows=end_the_reading_backend
        )
    assert terminated == [1]
