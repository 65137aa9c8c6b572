"""CQL → PostgreSQL type mapping, overrides, masking and canonical spelling."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_pipelines.config import load_config, parse_config
from cdc_pipelines.cqltypes import SCALAR_TYPES, parse_cql_type
from cdc_pipelines.postgres.types import canonical_pg_type, column_pg_type, pg_type

EXAMPLE = Path(__file__).resolve().parents[2] / "pipeline.yaml"

SCALARS = {
    "int": "integer",
    "bigint": "bigint",
    "counter": "bigint",
    "smallint": "smallint",
    "tinyint": "smallint",
    "varint": "numeric",
    "decimal": "numeric",
    "float": "real",
    "double": "double precision",
    "boolean": "boolean",
    "text": "text",
    "ascii": "text",
    "varchar": "text",
    "blob": "bytea",
    "uuid": "uuid",
    "timeuuid": "uuid",
    "timestamp": "timestamp with time zone",
    "date": "date",
    "time": "bigint",
    "duration": "text",
    "inet": "inet",
}


def test_every_cql_scalar_has_a_mapping() -> None:
    assert set(SCALARS) == SCALAR_TYPES


@pytest.mark.parametrize(("cql", "expected"), sorted(SCALARS.items()))
def test_scalar_mapping_is_writable_by_the_sink(cql: str, expected: str) -> None:
    mapped = pg_type(parse_cql_type(cql))
    assert mapped.sql == expected
    assert mapped.sink_writable


@pytest.mark.parametrize(
    ("cql", "expected"),
    [
        ("list<int>", "integer[]"),
        ("set<bigint>", "bigint[]"),
        ("list<tinyint>", "smallint[]"),
        ("list<float>", "real[]"),
        ("set<double>", "double precision[]"),
        ("list<boolean>", "boolean[]"),
        ("set<text>", "text[]"),
        ("frozen<list<ascii>>", "text[]"),
        ("list<time>", "bigint[]"),
        # The sink binds arrays of strings as text[], which PostgreSQL will not assign to uuid[].
        ("list<uuid>", "text[]"),
        ("set<inet>", "text[]"),
        ("list<decimal>", "text[]"),
    ],
)
def test_lists_and_sets_of_writable_scalars_become_arrays(cql: str, expected: str) -> None:
    mapped = pg_type(parse_cql_type(cql))
    assert (mapped.sql, mapped.sink_writable) == (expected, True)


@pytest.mark.parametrize(
    "cql",
    [
        "map<text, int>",
        "frozen<map<int, frozen<list<text>>>>",
        "tuple<int, text>",
        "frozen<address>",
        "list<frozen<list<int>>>",
        "list<frozen<address>>",
        "list<timestamp>",
        "set<date>",
        "list<blob>",
    ],
)
def test_structured_types_become_jsonb_written_through_the_json_transform(cql: str) -> None:
    mapped = pg_type(parse_cql_type(cql))
    assert (mapped.sql, mapped.sink_writable) == ("jsonb", True)


def test_target_type_override_wins_and_is_canonical() -> None:
    table = parse_config(
        "tables:\n  - source: ks.t\n    target: s.t\n    partition_key: [id]\n    columns:\n"
        "      id: int\n"
        "      amount: {type: decimal, target_type: 'NUMERIC(38, 10)'}\n"
        "      at: {type: timestamp, target_type: timestamptz(3)}\n",
        "t.yaml",
        {},
    ).tables[0]
    assert column_pg_type(table, table.column("amount")).sql == "numeric(38,10)"
    assert column_pg_type(table, table.column("at")).sql == "timestamp(3) with time zone"


def test_masked_string_carried_columns_become_text() -> None:
    table = parse_config(
        "tables:\n  - source: ks.t\n    target: s.t\n    partition_key: [id]\n    columns:\n"
        "      id: int\n      token: uuid\n      ip: inet\n      score: int\n"
        "    mask: {token: hash, ip: redact, score: redact}\n",
        "t.yaml",
        {},
    ).tables[0]
    assert column_pg_type(table, table.column("token")).sql == "text"
    assert column_pg_type(table, table.column("ip")).sql == "text"
    assert column_pg_type(table, table.column("score")).sql == "integer"


def test_example_all_types_columns_map_as_documented() -> None:
    config = load_config(EXAMPLE, {})
    table = config.table("demo.all_types")
    mapped = {c.name: column_pg_type(table, c) for c in table.columns}
    assert mapped["c_time"].sql == "bigint"
    assert mapped["c_duration"].sql == "text"
    assert mapped["c_list_uuid"].sql == "text[]"
    assert mapped["c_frozen_list"].sql == "bigint[]"
    assert {name for name, t in mapped.items() if t.sql == "jsonb"} == {
        "c_map",
        "c_tuple",
        "c_udt",
    }
    assert all(t.sink_writable for t in mapped.values())


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("int4", "integer"),
        ("INT", "integer"),
        ("int8", "bigint"),
        ("float8", "double precision"),
        ("float4", "real"),
        ("float(10)", "real"),
        ("float(40)", "double precision"),
        ("bool", "boolean"),
        ("decimal(10,2)", "numeric(10,2)"),
        ("numeric( 38 , 10 )", "numeric(38,10)"),
        ("varchar(20)", "character varying(20)"),
        ("varchar", "character varying"),
        ("timestamptz", "timestamp with time zone"),
        ("timestamp", "timestamp without time zone"),
        ("timestamp(3)", "timestamp(3) without time zone"),
        ("timestamp(3) with time zone", "timestamp(3) with time zone"),
        ("timetz", "time with time zone"),
        ("int[]", "integer[]"),
        ("text [] []", "text[][]"),
        ("double  precision", "double precision"),
        ("jsonb", "jsonb"),
    ],
)
def test_canonical_spelling_matches_format_type(written: str, canonical: str) -> None:
    assert canonical_pg_type(written) == canonical
