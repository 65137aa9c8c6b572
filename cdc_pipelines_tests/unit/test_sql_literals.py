"""SQL literals for the dry-run script: every literal must read back as the value it was made from.

The round trip runs ``SELECT <literal>`` on the real PostgreSQL for random values of every
type repair writes; that is the proof the escaping and typing are right.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import struct
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from cassandra.util import Duration, Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.adapt import Loader
from psycopg.pq import Format

from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.literals import (
    JsonText,
    PgInterval,
    column_type,
    pg_value,
    sql_literal,
)

EXAMPLES = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
HOSTILE_TEXT = [
    "",
    "'",
    "''",
    "\\",
    "\\'",
    "'; DROP TABLE x; --",
    "E'\\x00'",
    "$$ $tag$",
    "line\nbreak\r\ttab",
    "naïve ключ 😀 \u2028 \u00a0",
    ":var :'var' \\set",
    '"quoted"',
]
OFFSETS = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(-dt.timedelta(hours=8)),
]


class _IntervalParts(Loader):
    """Binary interval → (months, days, µs): timedelta would fold months into days."""

    format = Format.BINARY

    def load(self, data: Any) -> tuple[int, int, int]:
        micros, days, months = struct.unpack(">qii", bytes(data))
        return months, days, micros


@pytest.fixture(scope="module")
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        yield connection


def select(conn: psycopg.Connection[Any], literal: str) -> Any:
    with conn.cursor(binary=True) as cursor:
        cursor.adapters.register_loader("interval", _IntervalParts)
        row = cursor.execute(f"SELECT {literal}").fetchone()
    assert row is not None
    return row[0]


def float32(value: float) -> float:
    single: float = struct.unpack("f", struct.pack("f", value))[0]
    return single


def same_float(left: float, right: float) -> bool:
    if math.isnan(left) or math.isnan(right):
        return math.isnan(left) and math.isnan(right)
    return left == right and math.copysign(1.0, left) == math.copysign(1.0, right)


# --------------------------------------------------------------------------- text-like


@EXAMPLES
@given(st.one_of(st.sampled_from(HOSTILE_TEXT), st.text().filter(lambda s: "\x00" not in s)))
def test_text_round_trips(conn: psycopg.Connection[Any], value: str) -> None:
    assert select(conn, sql_literal(value, "text")) == value


@pytest.mark.parametrize("value", [s for s in HOSTILE_TEXT if "\\" in s])
def test_text_with_backslashes_survives_non_standard_strings(
    conn: psycopg.Connection[Any], value: str
) -> None:
    literal = sql_literal(value, "character varying(100)")
    assert literal.startswith("E'")
    conn.execute("SET standard_conforming_strings = off")
    try:
        assert select(conn, literal) == value
    finally:
        conn.execute("SET standard_conforming_strings = on")


def test_text_rejects_nul_and_surrogates() -> None:
    with pytest.raises(ReconcileError, match="NUL"):
        sql_literal("a\x00b", "text")
    with pytest.raises(ReconcileError, match="surrogate"):
        sql_literal("a\ud800", "text")
    with pytest.raises(ReconcileError, match="expected str"):
        sql_literal(5, "text")


def test_char_literal_is_not_truncated_by_the_cast() -> None:
    # ``'abc'::character`` would be char(1) = 'a'; the literal casts through text instead.
    assert sql_literal("abc", "character(3)") == "'abc'::text"


@EXAMPLES
@given(st.binary(max_size=300))
def test_bytea_round_trips(conn: psycopg.Connection[Any], value: bytes) -> None:
    assert select(conn, sql_literal(value, "bytea")) == value


@EXAMPLES
@given(st.uuids())
def test_uuid_round_trips(conn: psycopg.Connection[Any], value: uuid.UUID) -> None:
    assert select(conn, sql_literal(value, "uuid")) == value
    assert select(conn, sql_literal(str(value), "uuid")) == value


# --------------------------------------------------------------------------- numbers


@EXAMPLES
@given(
    st.one_of(
        st.integers(0, 40).flatmap(
            lambda places: st.decimals(
                min_value=Decimal("-1e30"),
                max_value=Decimal("1e30"),
                places=places,
                allow_nan=False,
                allow_infinity=False,
            )
        ),
        st.integers(-(10**120), 10**120),
        st.sampled_from(
            [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("-0.00")]
        ),
    )
)
def test_numeric_round_trips_exactly(conn: psycopg.Connection[Any], value: Decimal | int) -> None:
    result = select(conn, sql_literal(value, "numeric"))
    if isinstance(value, Decimal) and value.is_nan():
        assert result.is_nan()
        return
    assert result == value
    if isinstance(value, Decimal) and value.is_finite():
        assert format(result, "f") == format(value.copy_abs() if value.is_zero() else value, "f")


def test_numeric_huge_integer_beyond_python_str_limit(conn: psycopg.Connection[Any]) -> None:
    value = 10**5000 + 7
    assert select(conn, sql_literal(value, "numeric")) == value


def test_numeric_rejects_what_postgresql_cannot_hold() -> None:
    with pytest.raises(ReconcileError, match="after the point"):
        sql_literal(Decimal("1E-20000"), "numeric")
    with pytest.raises(ReconcileError, match="signalling"):
        sql_literal(Decimal("sNaN"), "numeric")
    with pytest.raises(ReconcileError, match="boolean"):
        sql_literal(True, "numeric")


@EXAMPLES
@given(st.floats())
def test_double_round_trips_including_nan_and_infinities(
    conn: psycopg.Connection[Any], value: float
) -> None:
    literal = sql_literal(value, "double precision")
    assert same_float(select(conn, literal), value)
    if not math.isfinite(value):
        assert literal in (
            "'NaN'::double precision",
            "'Infinity'::double precision",
            "'-Infinity'::double precision",
        )


@EXAMPLES
@given(st.floats(width=32))
def test_real_round_trips(conn: psycopg.Connection[Any], value: float) -> None:
    assert same_float(select(conn, sql_literal(value, "real")), value)


@EXAMPLES
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-3e38, max_value=3e38))
def test_real_rounds_doubles_once(conn: psycopg.Connection[Any], value: float) -> None:
    expected = float32(value)
    if expected == 0.0 and value != 0.0:
        with pytest.raises(ReconcileError, match="out of range"):
            pg_value(value, "real")
        return
    assert pg_value(value, "real") == expected
    assert same_float(select(conn, sql_literal(value, "real")), expected)


def test_real_rejects_overflow() -> None:
    with pytest.raises(ReconcileError, match="out of range for real"):
        sql_literal(1e39, "real")


@EXAMPLES
@given(
    st.sampled_from([("smallint", 16), ("integer", 32), ("bigint", 64)]).flatmap(
        lambda t: st.tuples(st.just(t[0]), st.integers(-(2 ** (t[1] - 1)), 2 ** (t[1] - 1) - 1))
    )
)
def test_integers_round_trip(conn: psycopg.Connection[Any], case: tuple[str, int]) -> None:
    pg_type, value = case
    assert select(conn, sql_literal(value, pg_type)) == value


def test_integers_out_of_range_and_booleans_are_rejected() -> None:
    with pytest.raises(ReconcileError, match="out of range"):
        sql_literal(2**15, "smallint")
    with pytest.raises(ReconcileError, match="out of range"):
        sql_literal(-(2**63) - 1, "bigint")
    with pytest.raises(ReconcileError, match="boolean"):
        sql_literal(False, "integer")


@pytest.mark.parametrize("value", [True, False])
def test_boolean_round_trips(conn: psycopg.Connection[Any], value: bool) -> None:
    assert select(conn, sql_literal(value, "boolean")) is value


# --------------------------------------------------------------------------- time


@EXAMPLES
@given(
    st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from(OFFSETS),
    )
)
def test_timestamptz_round_trips_aware_datetimes(
    conn: psycopg.Connection[Any], value: dt.datetime
) -> None:
    assert select(conn, sql_literal(value, "timestamp with time zone")) == value
    assert select(conn, sql_literal(value, "timestamp")) == value.astimezone(dt.UTC).replace(
        tzinfo=None
    )


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ReconcileError, match="naive"):
        sql_literal(dt.datetime(2024, 1, 1, 12), "timestamptz")
    with pytest.raises(ReconcileError, match="naive"):
        sql_literal(dt.datetime(2024, 1, 1, 12), "timestamp")


@EXAMPLES
@given(st.dates())
def test_date_round_trips(conn: psycopg.Connection[Any], value: dt.date) -> None:
    assert select(conn, sql_literal(value, "date")) == value


def test_date_rejects_datetime() -> None:
    with pytest.raises(ReconcileError, match=r"value\.date\(\)"):
        sql_literal(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "date")


@EXAMPLES
@given(st.times())
def test_time_round_trips(conn: psycopg.Connection[Any], value: dt.time) -> None:
    assert select(conn, sql_literal(value, "time")) == value


def test_time_from_cassandra_time_needs_whole_microseconds(conn: psycopg.Connection[Any]) -> None:
    assert select(conn, sql_literal(Time(3_723_000_004_000), "time")) == dt.time(1, 2, 3, 4)
    with pytest.raises(ReconcileError, match="nanoseconds"):
        sql_literal(Time(1), "time")


@EXAMPLES
@given(
    months=st.integers(*INT32),
    days=st.integers(*INT32),
    micros=st.integers(*INT64),
    style=st.sampled_from(["postgres", "sql_standard", "iso_8601", "postgres_verbose"]),
)
def test_interval_round_trips_months_days_micros(
    conn: psycopg.Connection[Any], months: int, days: int, micros: int, style: str
) -> None:
    literal = sql_literal(Duration(months, days, micros * 1000), "interval")
    conn.execute(f"SET IntervalStyle = {style}")
    try:
        assert select(conn, literal) == (months, days, micros)
    finally:
        conn.execute("SET IntervalStyle = postgres")


@EXAMPLES
@given(st.timedeltas())
def test_interval_round_trips_timedeltas(
    conn: psycopg.Connection[Any], value: dt.timedelta
) -> None:
    expected = (0, value.days, value.seconds * 1_000_000 + value.microseconds)
    assert select(conn, sql_literal(value, "interval")) == expected


def test_interval_rejects_nanoseconds() -> None:
    with pytest.raises(ReconcileError, match="nanoseconds"):
        sql_literal(Duration(1, 2, 3), "interval")
    assert pg_value(Duration(1, 2, -3000), "interval") == PgInterval(1, 2, -3)


# --------------------------------------------------------------------------- addresses


@EXAMPLES
@given(
    st.one_of(
        st.ip_addresses(),
        st.ip_addresses(v=4).flatmap(
            lambda a: st.integers(0, 32).map(lambda p: ipaddress.ip_interface(f"{a}/{p}"))
        ),
        st.ip_addresses(v=6).flatmap(
            lambda a: st.integers(0, 128).map(lambda p: ipaddress.ip_interface(f"{a}/{p}"))
        ),
    )
)
def test_inet_round_trips(
    conn: psycopg.Connection[Any],
    value: ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Interface
    | ipaddress.IPv6Interface,
) -> None:
    result = select(conn, sql_literal(value, "inet"))
    assert str(ipaddress.ip_interface(str(result))) == str(ipaddress.ip_interface(str(value)))
    assert select(conn, sql_literal(str(value), "inet")) == result


@EXAMPLES
@given(
    st.ip_addresses(v=4).flatmap(
        lambda a: st.integers(0, 32).map(lambda p: ipaddress.ip_interface(f"{a}/{p}").network)
    )
)
def test_cidr_round_trips(conn: psycopg.Connection[Any], value: ipaddress.IPv4Network) -> None:
    assert select(conn, sql_literal(value, "cidr")) == value


# --------------------------------------------------------------------------- arrays and JSON


@EXAMPLES
@given(st.lists(st.one_of(st.none(), st.integers(*INT64)), max_size=20))
def test_bigint_arrays_round_trip(conn: psycopg.Connection[Any], value: list[int | None]) -> None:
    assert select(conn, sql_literal(value, "bigint[]")) == value


@EXAMPLES
@given(
    st.lists(
        st.one_of(
            st.none(), st.sampled_from(HOSTILE_TEXT), st.text().filter(lambda s: "\x00" not in s)
        ),
        max_size=10,
    )
)
def test_text_arrays_round_trip(conn: psycopg.Connection[Any], value: list[str | None]) -> None:
    assert select(conn, sql_literal(value, "text[]")) == value


@EXAMPLES
@given(st.lists(st.floats(), max_size=10))
def test_double_arrays_round_trip(conn: psycopg.Connection[Any], value: list[float]) -> None:
    result = select(conn, sql_literal(value, "double precision[]"))
    assert len(result) == len(value)
    assert all(same_float(r, v) for r, v in zip(result, value, strict=True))


@pytest.mark.parametrize(
    ("value", "pg_type"),
    [
        ([], "integer[]"),
        ([], "text[]"),
        ([None], "uuid[]"),
        ([uuid.UUID(int=1), None], "uuid[]"),
        ([Decimal("1.50"), Decimal("-3")], "numeric[]"),
        ([b"\x00\xff", b""], "bytea[]"),
        ([True, None, False], "boolean[]"),
        ([dt.date(2024, 2, 29)], "date[]"),
        ([Duration(1, 2, 3000)], "interval[]"),
        ([JsonText('{"a":1}'), None], "jsonb[]"),
    ],
)
def test_typed_and_empty_arrays_round_trip(
    conn: psycopg.Connection[Any], value: list[Any], pg_type: str
) -> None:
    result = select(conn, sql_literal(value, pg_type))
    expected = [pg_value(v, column_type(pg_type).element) for v in value]
    if pg_type == "interval[]":
        expected = [(1, 2, 3)]
    if pg_type == "jsonb[]":
        expected = [{"a": 1}, None]
    assert result == expected
    if not value:
        assert sql_literal(value, pg_type) == f"ARRAY[]::{column_type(pg_type).cast}"


def test_sets_become_sorted_arrays(conn: psycopg.Connection[Any]) -> None:
    assert select(conn, sql_literal({3, 1, 2}, "integer[]")) == [1, 2, 3]


def test_nested_arrays_are_rejected() -> None:
    with pytest.raises(ReconcileError, match="nested"):
        sql_literal([[1, 2]], "integer[]")
    with pytest.raises(ReconcileError, match="one-dimensional"):
        sql_literal([[1, 2]], "integer[][]")


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text().filter(lambda s: "\x00" not in s),
    st.sampled_from(HOSTILE_TEXT),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text().filter(lambda s: "\x00" not in s), children, max_size=4),
    ),
    max_leaves=12,
)


def exact_numbers(value: Any) -> Any:
    """JSON with every number as a Decimal: jsonb keeps numbers as numeric, not float."""
    if isinstance(value, bool | str | Decimal) or value is None:
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, list):
        return [exact_numbers(v) for v in value]
    return {k: exact_numbers(v) for k, v in value.items()}


@EXAMPLES
@given(JSON_VALUES.filter(lambda v: v is not None))  # top-level None is SQL NULL
def test_jsonb_round_trips(conn: psycopg.Connection[Any], value: Any) -> None:
    literal = sql_literal(value, "jsonb")
    text = select(conn, f"({literal})::text")
    assert exact_numbers(json.loads(text, parse_float=Decimal)) == exact_numbers(value)


def test_jsonb_literal_has_sorted_keys_and_escapes_quotes() -> None:
    literal = sql_literal({"b": "it's", "a": "back\\slash"}, "jsonb")
    assert literal == """E'{"a":"back\\\\\\\\slash","b":"it''s"}'::jsonb"""


def test_jsonb_rejects_nan_nul_and_unserializable() -> None:
    with pytest.raises(ReconcileError, match="NaN"):
        sql_literal({"x": math.nan}, "jsonb")
    with pytest.raises(ReconcileError, match="NUL"):
        sql_literal({"x": "a\x00"}, "jsonb")
    with pytest.raises(ReconcileError, match="NUL"):
        sql_literal(JsonText('"\\u0000"'), "jsonb")
    assert sql_literal(JsonText('"\\\\u0000"'), "jsonb")  # an escaped backslash, not NUL
    with pytest.raises(ReconcileError, match="JSON-serializable"):
        sql_literal({"x": Decimal("1.5")}, "jsonb")


# --------------------------------------------------------------------------- types


def test_unknown_and_unsafe_types_are_rejected() -> None:
    with pytest.raises(ReconcileError, match="not supported"):
        column_type("point")
    with pytest.raises(ReconcileError, match="plain PostgreSQL type"):
        column_type("text); DROP TABLE x; --")


def test_none_is_null() -> None:
    assert sql_literal(None, "uuid") == "NULL"
    assert sql_literal([None], "uuid[]") == "ARRAY[NULL::uuid]::uuid[]"
