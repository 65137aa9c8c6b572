"""The target index reads PostgreSQL's numeric columns into the same canonical form as the source.

Decimals and varints come out of PostgreSQL through ``trim_scale`` and skip client-side
normalization; hypothesis checks that the result still equals the canonical form of the
driver's values, on the devstack's PostgreSQL (psql streaming included).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.postgres.target_index import build_target_index, read_slice_index
from cdc_pipelines.reconcile.canonical import ROW_HASH_COLUMN, CanonicalSchema, from_python_rows
from cdc_pipelines.scylla.slices import slice_id
from cdc_pipelines_tests.unit.test_tokens import KEY_VALUES

VERSION = "_cdc_version_us"
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


def _index(dsn: str, table: TableSpec, directory: Path) -> tuple[CanonicalSchema, Any]:
    schema = CanonicalSchema.from_table(table, version_column=VERSION)
    with psycopg.connect(dsn) as conn:
        build_target_index(conn, table, schema, 1, directory, dsn=dsn)
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
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
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
    """The reader stops at the first bad block; psql, still writing, must not mask why."""
    _fill(postgres_dsn, numbers, [(Decimal(0), Decimal("NaN"), None, None, 7)])
    relation = sql.Identifier(numbers.target_schema, numbers.target_table)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (k, amount, big, note, {}) "
                "SELECT g, g, g, repeat('x', 40), 7 FROM generate_series(1, 2000000) AS g"
            ).format(relation, sql.Identifier(VERSION))
        )

    with pytest.raises(ReconcileError, match=r"column 'amount'.*'NaN' is not a finite number"):
        _index(postgres_dsn, numbers, tmp_path)
