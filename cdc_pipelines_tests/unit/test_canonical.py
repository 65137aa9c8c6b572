"""Both readers reach the same canonical Arrow values: driver rows and PostgreSQL COPY text agree."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import random
import uuid
from collections import namedtuple
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from cassandra.util import Duration, SortedSet, Time
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipelines.config import TableSpec, Tolerances
from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.rows.canonical import (
    TIMESTAMP_TYPE,
    CanonicalColumn,
    CanonicalSchema,
    ColumnRole,
    canonical_arrow_type,
    decimal_canonical,
    duration_parts,
    from_postgres_text,
    from_python_rows,
    normalize,
    normalize_decimal_text,
    read_postgres_csv,
)
from cdc_pipelines.rows.connector_form import connector_value
from cdc_pipelines_tests.unit.test_tokens import KEY_VALUES

POINT = namedtuple("POINT", ["x", "label"])
USER_TYPES = (("point", (("x", CqlType("int")), ("label", CqlType("text")))),)

# Compared values: the key strategies plus what only a regular column holds.
VALUE_STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    **KEY_VALUES,
    "float": st.floats(width=32),
    "double": st.floats(),
    "text": st.text(st.characters(exclude_categories=("Cs",))),
    "blob": st.binary(),
    # PostgreSQL time and interval keep microseconds: generate what survives the round trip.
    "time": st.integers(0, 86_399_999_999).map(lambda us: Time(us * 1000)),
    "duration": st.builds(
        lambda sign, months, days, micros: Duration(
            sign * months, sign * days, sign * micros * 1000
        ),
        st.sampled_from([1, -1]),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.integers(0, 10**15),
    ),
}


def schema_of(types: Sequence[str], *, keys: int = 0, precision: str = "us") -> CanonicalSchema:
    """Columns c0… of the given types; the first ``keys`` of them form the partition key."""
    columns = []
    for i, type_text in enumerate(types):
        cql_type = parse_cql_type(type_text)
        role = ColumnRole.PARTITION_KEY if i < keys else ColumnRole.COMPARED
        columns.append(CanonicalColumn(f"c{i}", cql_type, role, canonical_arrow_type(cql_type)))
    columns.append(CanonicalColumn("version", CqlType("bigint"), ColumnRole.VERSION, pa.int64()))
    return CanonicalSchema("ks.t", tuple(columns), precision, USER_TYPES)


def _pg_fraction(micros: int) -> str:
    return f".{micros:06d}".rstrip("0") if micros else ""


def _pg_float(number: float, single: bool) -> str:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return str(np.float32(number)) if single else repr(number)


def pg_text(cql_name: str, value: object) -> str:
    """The text PostgreSQL 15 prints for the target column that holds ``value``."""
    if cql_name in ("float", "double"):
        return _pg_float(float(value), cql_name == "float")  # type: ignore[arg-type]
    if cql_name == "decimal":
        return format(value, "f")
    if cql_name == "boolean":
        return "t" if value else "f"
    if cql_name == "blob":
        return "\\x" + bytes(value).hex()  # type: ignore[arg-type]
    if cql_name == "timestamp":
        assert isinstance(value, dt.datetime)
        return f"{value.year:04d}-{value:%m-%d %H:%M:%S}{_pg_fraction(value.microsecond)}+00"
    if cql_name == "date":
        day = dt.date(1970, 1, 1) + dt.timedelta(days=value.days_from_epoch)  # type: ignore[attr-defined]
        return f"{day.year:04d}-{day:%m-%d}"
    if cql_name == "time":
        micros = value.nanosecond_time // 1000  # type: ignore[attr-defined]
        seconds, fraction = divmod(micros, 1_000_000)
        return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{_pg_fraction(fraction)}"
    if cql_name == "duration":
        micros = value.nanoseconds // 1000  # type: ignore[attr-defined]
        seconds = Decimal(micros) / 1_000_000
        return f"P{value.months}M{value.days}DT{seconds}S"  # type: ignore[attr-defined]
    return str(value)


def comparable(table: pa.Table) -> list[dict[str, object]]:
    """Rows with every NaN replaced by a marker (Arrow's equality has NaN != NaN)."""
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in table.to_pylist()
    ]


def postgres_csv(rows: Sequence[Sequence[str | None]]) -> bytes:
    """CSV as COPY writes it: NULL unquoted-empty, every other value quoted."""

    def field(text: str | None) -> str:
        return "" if text is None else '"' + text.replace('"', '""') + '"'

    return "".join(",".join(field(v) for v in row) + "\n" for row in rows).encode()


@pytest.mark.parametrize("cql_name", sorted(VALUE_STRATEGIES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_driver_values_and_postgres_text_become_the_same_arrow(
    cql_name: str, data: st.DataObject
) -> None:
    values = data.draw(st.lists(st.none() | VALUE_STRATEGIES[cql_name], min_size=1, max_size=30))
    schema = schema_of([cql_name])
    source = pa.Table.from_batches([from_python_rows([(v, 7) for v in values], schema)])
    csv = postgres_csv([(None if v is None else pg_text(cql_name, v), "7") for v in values])
    target = read_postgres_csv(csv, schema)
    assert target.schema == schema.arrow_schema
    assert comparable(target) == comparable(source)


@pytest.mark.parametrize("cql_name", ["decimal", "timestamp", "time", "uuid", "text"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_key_columns_read_the_same_from_both_sides(cql_name: str, data: st.DataObject) -> None:
    values = data.draw(st.lists(VALUE_STRATEGIES[cql_name], min_size=1, max_size=20))
    schema = schema_of([cql_name], keys=1)
    source = pa.Table.from_batches([from_python_rows([(v, 1) for v in values], schema)])
    target = read_postgres_csv(postgres_csv([(pg_text(cql_name, v), "1") for v in values]), schema)
    assert target.equals(source)


# The exact bytes PostgreSQL 15 wrote for COPY (SELECT …) TO STDOUT (FORMAT CSV) in a session
# configured with POSTGRES_SESSION_SETTINGS.
POSTGRES_SAMPLE = (
    b'1,12.3400,0.00,1.1,NaN,-Infinity,t,"",,"a""b,c",\\x00ff,\\x,'
    b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,2024-01-02 01:04:05.123456+00,1900-01-01,"
    b"03:04:05.123456,P1Y2M3DT4H5M6.5S,P-1DT-1.5S,::ffff:1.2.3.4,"
    b'"{""a"": null, ""b"": [1, 2.50]}",[],3.4028235e+38,42\n'
)
SAMPLE_TYPES = [
    "smallint", "decimal", "decimal", "float", "float", "double", "boolean", "text", "text",
    "text", "blob", "blob", "uuid", "timestamp", "date", "time", "duration", "duration",
    "inet", "map<text, frozen<list<double>>>", "list<int>", "float",
]  # fmt: skip


def test_real_postgres_copy_output_is_read_exactly() -> None:
    table = read_postgres_csv(POSTGRES_SAMPLE, schema_of(SAMPLE_TYPES))
    row = table.to_pylist()[0]
    assert row["c0"] == 1
    assert (row["c1"], row["c2"]) == ("12.34", "0")
    assert row["c3"] == pytest.approx(1.1) and math.isnan(row["c4"]) and row["c5"] == -math.inf
    assert row["c6"] is True
    assert (row["c7"], row["c8"], row["c9"]) == ("", None, 'a"b,c')
    assert (row["c10"], row["c11"]) == (b"\x00\xff", b"")
    assert row["c12"] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").bytes
    assert row["c13"] == dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC)
    assert row["c14"] == dt.date(1900, 1, 1)
    assert (
        table.column("c15").cast(pa.int64())[0].as_py()
        == (3 * 3600 + 4 * 60 + 5) * 10**9 + 123_456_000
    )
    assert row["c16"] == f"14mo3d{(4 * 3600 + 5 * 60) * 10**9 + 6_500_000_000}ns"
    assert row["c17"] == "0mo-1d-1500000000ns"
    assert row["c18"] == "::ffff:102:304"
    assert row["c19"] == '{"a":null,"b":[1.0,2.5]}'
    assert row["c20"] is None  # an empty non-frozen collection is NULL, as Cassandra returns it
    assert row["c21"] == pytest.approx(3.4028235e38)


def test_table_spec_builds_the_canonical_layout() -> None:
    spec = TableSpec.model_validate(
        {
            "source": "shop.orders",
            "target": "public.orders",
            "partition_key": ["customer"],
            "clustering_key": ["placed"],
            "columns": {
                "customer": "uuid",
                "placed": "timestamp",
                "total": "decimal",
                "note": "text",
            },
            "exclude": ["note"],
        }
    )
    schema = CanonicalSchema.from_table(
        spec, version_column="_cdc_version_us", tolerances=Tolerances(timestamp_precision="s")
    )
    assert schema.column_names == ("customer", "placed", "total", "_cdc_version_us")
    assert [c.name for c in schema.key_columns] == ["customer", "placed"]
    assert [c.name for c in schema.compared_columns] == ["total"]
    assert schema.arrow_schema.field("placed").type == TIMESTAMP_TYPE
    assert schema.timestamp_precision == "s"


@settings(deadline=None)
@given(
    st.integers(-(10**25), 10**25),
    st.integers(-5, 30),
    st.booleans(),
)
def test_vectorized_decimal_normalization_equals_the_python_one(
    unscaled: int, scale: int, keep: bool
) -> None:
    number = Decimal(unscaled).scaleb(-scale)
    plain = format(number, "f")
    vectorized = normalize_decimal_text(
        pa.array([plain, "+" + plain.lstrip("-"), "00" + plain.lstrip("-")]), keep_scale=keep
    )
    expected = decimal_canonical(number, keep_scale=keep)
    assert vectorized[0].as_py() == expected
    assert (
        vectorized[1].as_py()
        == vectorized[2].as_py()
        == decimal_canonical(abs(number), keep_scale=keep)
    )


@pytest.mark.parametrize(
    ("text", "value_form", "key_form"),
    [
        ("1.500", "1.5", "1.500"),
        ("-0.00", "0", "0.00"),
        ("100", "100", "100"),
        ("007.10", "7.1", "7.10"),
    ],
)
def test_decimal_scale_is_kept_only_for_keys(text: str, value_form: str, key_form: str) -> None:
    assert normalize_decimal_text(pa.array([text]), keep_scale=False)[0].as_py() == value_form
    assert normalize_decimal_text(pa.array([text]), keep_scale=True)[0].as_py() == key_form


COLLECTION_CASES = [
    ("set<int>", SortedSet([3, 1, 2]), "[3, 1, 2, 2]", "[1,2,3]"),
    ("map<int, text>", {10: "x", 9: "y"}, '{"9": "y", "10": "x"}', '{"10":"x","9":"y"}'),
    ("map<int, text>", {10: "x"}, '[[10, "x"]]', '{"10":"x"}'),
    ("list<double>", [2.5, math.nan], '[2.50, "NaN"]', '[2.5,"NaN"]'),
    (
        "list<timestamp>",
        [dt.datetime(2024, 1, 2, 3, 4, 5, 123000)],
        '["2024-01-02T05:04:05.123+02:00", 1704164645123]',
        None,
    ),
    ("list<blob>", [b"\x01\x02"], '["\\\\x0102", "AQI="]', None),
    ("frozen<point>", POINT(1, None), '{"label": null, "x": 1}', '{"label":null,"x":1}'),
    ("frozen<list<int>>", [], "[]", "[]"),
    ("list<int>", None, "[]", None),
    ("point", POINT(None, None), '{"x": null}', None),
    ("tuple<int, text>", (1, "a"), '[1, "a"]', '[1,"a"]'),
    ("frozen<set<frozen<map<text, uuid>>>>", SortedSet(), "[]", "[]"),
]


@pytest.mark.parametrize(("type_text", "driver", "postgres", "expected"), COLLECTION_CASES)
def test_collections_have_one_canonical_json(
    type_text: str, driver: object, postgres: str, expected: str | None
) -> None:
    schema = schema_of([type_text])
    source = from_python_rows([(driver, 1)], schema).column(0)[0].as_py()
    target = read_postgres_csv(postgres_csv([(postgres, "1")]), schema).column(0)[0].as_py()
    if expected is not None or type_text in ("list<int>", "point"):
        assert source == expected
    if "timestamp" in type_text or "blob" in type_text:
        element = json.loads(source)[0]
        assert json.loads(target) == [element, element]
    else:
        assert target == source


@pytest.mark.parametrize(
    ("precision", "expected"),
    [
        ("s", dt.datetime(1969, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        ("ms", dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC)),
        ("us", dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)),
    ],
)
def test_compared_timestamps_are_floored_to_the_precision(
    precision: str, expected: dt.datetime
) -> None:
    schema = schema_of(["timestamp", "timestamp"], keys=1, precision=precision)
    text = "1969-12-31 23:59:59.999999+00"
    table = read_postgres_csv(postgres_csv([(text, text, "1")]), schema)
    assert table.column("c1")[0].as_py() == expected
    assert table.column("c0")[0].as_py() == dt.datetime(
        1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC
    )


def test_driver_timestamps_are_rounded_to_cassandras_millisecond() -> None:
    schema = schema_of(["timestamp"], keys=1)
    drifted = dt.datetime(9042, 1, 4, 16, 0, 41, 196991)  # as the driver's float math returns it
    table = from_python_rows([(drifted, 1)], schema)
    assert table.column(0)[0].as_py() == dt.datetime(9042, 1, 4, 16, 0, 41, 197000, tzinfo=dt.UTC)


def test_timestamp_without_zone_is_read_as_utc() -> None:
    schema = schema_of(["timestamp"])
    table = read_postgres_csv(postgres_csv([("2024-01-02 03:04:05.5", "1")]), schema)
    assert table.column(0)[0].as_py() == dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)


@settings(deadline=None)
@given(st.lists(st.none() | st.binary(max_size=64), max_size=40))
def test_bytea_hex_decoding_is_byte_exact(blobs: list[bytes | None]) -> None:
    schema = schema_of(["blob"])
    table = read_postgres_csv(
        postgres_csv([(None if b is None else "\\x" + b.hex(), "1") for b in blobs]), schema
    )
    assert table.column(0).to_pylist() == blobs


@settings(deadline=None)
@given(st.lists(st.none() | st.uuids(), max_size=40), st.booleans())
def test_uuid_text_decoding_is_exact(values: list[uuid.UUID | None], upper: bool) -> None:
    texts = [None if v is None else (str(v).upper() if upper else str(v)) for v in values]
    table = read_postgres_csv(postgres_csv([(t, "1") for t in texts]), schema_of(["uuid"]))
    assert table.column(0).to_pylist() == [None if v is None else v.bytes for v in values]


@pytest.mark.parametrize(
    ("type_text", "text", "message"),
    [
        ("uuid", "not-a-uuid", "not a UUID"),
        ("uuid", "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11", "8-4-4-4-12"),
        ("blob", "abc", "bytea_output"),
        ("timestamp", "infinity", "not an ISO timestamp"),
        ("inet", "10.0.0.0/8", "network"),
        ("varint", "12.5", "not an integer"),
        ("int", "x", "does not parse"),
        ("boolean", "yes", "t/f"),
        ("list<int>", "{1,2}", "cannot read"),
    ],
)
def test_unreadable_target_text_names_the_column_and_the_fix(
    type_text: str, text: str, message: str
) -> None:
    with pytest.raises(ReconcileError, match=message) as raised:
        read_postgres_csv(postgres_csv([(text, "1")]), schema_of([type_text]))
    assert "c0" in str(raised.value)


def test_csv_with_the_wrong_column_count_is_refused() -> None:
    with pytest.raises(ReconcileError, match="not CSV with 2 columns"):
        read_postgres_csv(b'"1","2","3"\n', schema_of(["int"]))


def test_empty_copy_output_is_an_empty_canonical_table() -> None:
    schema = schema_of(["int", "uuid"])
    table = read_postgres_csv(b"", schema)
    assert table.num_rows == 0 and table.schema == schema.arrow_schema


def test_source_rows_must_match_the_column_order() -> None:
    with pytest.raises(ReconcileError, match="has 1 values, expected 2"):
        from_python_rows([(1,)], schema_of(["int"]))


def test_wrong_driver_value_names_the_column() -> None:
    with pytest.raises(ReconcileError, match=r"column 'c0' \(uuid\): cannot read 'zz'"):
        from_python_rows([("zz", 1)], schema_of(["uuid"]))


def test_normalize_conforms_typed_tables_idempotently() -> None:
    schema = schema_of(["timestamp", "int"], precision="ms")
    typed = pa.table(
        {
            "extra": [1],
            "c1": pa.array([5], pa.int64()),
            "c0": pa.array([1_700_000_000_123_456], pa.timestamp("us")),
            "version": pa.array([3], pa.int32()),
        }
    )
    once = normalize(typed, schema)
    assert once.schema == schema.arrow_schema
    assert once.column("c0")[0].as_py() == dt.datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.UTC
    )
    assert normalize(once, schema).equals(once)


def test_normalize_refuses_missing_columns() -> None:
    with pytest.raises(ReconcileError, match=r"columns \['version'\] are missing"):
        normalize(pa.table({"c0": [1]}), schema_of(["int"]))


def test_colliding_column_names_are_refused() -> None:
    column = CanonicalColumn("_cdc_row_hash", CqlType("int"), ColumnRole.COMPARED, pa.int32())
    version = CanonicalColumn("v", CqlType("bigint"), ColumnRole.VERSION, pa.int64())
    with pytest.raises(ReconcileError, match="collide"):
        CanonicalSchema("ks.t", (column, version), "ms")


def test_blob_elements_accept_hex_and_base64() -> None:
    schema = schema_of(["list<blob>"])
    encoded = base64.b64encode(b"\xff").decode()
    table = read_postgres_csv(postgres_csv([(json.dumps(["0xff", "\\xff", encoded]), "1")]), schema)
    assert table.column(0)[0].as_py() == '["0xff","0xff","0xff"]'


def test_target_columns_must_arrive_as_text() -> None:
    typed = pa.table({"c0": pa.array([1], pa.int32()), "version": pa.array(["1"])})
    with pytest.raises(ReconcileError, match="every column as string"):
        from_postgres_text(typed, schema_of(["int"]))
    text = pa.table({"c0": pa.array(["1"]), "version": pa.array(["2"])})
    assert from_postgres_text(text, schema_of(["int"])).to_pylist() == [{"c0": 1, "version": 2}]


def test_collection_timestamps_keep_four_digit_years() -> None:
    schema = schema_of(["list<timestamp>"])
    early = dt.datetime(1, 1, 1, 0, 0, 0, 1000)
    source = from_python_rows([([early], 1)], schema).column(0)[0].as_py()
    target = read_postgres_csv(postgres_csv([('["0001-01-01T00:00:00.001+00:00"]', "1")]), schema)
    assert source == '["0001-01-01T00:00:00.001000Z"]' == target.column(0)[0].as_py()


sink_floats = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8),
    st.dictionaries(st.text(max_size=5), sink_floats, min_size=1, max_size=6),
    st.lists(st.integers(0, 10**12), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_sink_json_in_any_order_and_spacing_is_canonical(
    numbers: list[int], weights: dict[str, float], millis: list[int], shuffler: random.Random
) -> None:
    schema = schema_of(["set<int>", "map<text, double>", "list<timestamp>"])
    moments = [dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=m) for m in millis]
    source = from_python_rows([(SortedSet(numbers), weights, moments, 1)], schema)
    shuffled_numbers = numbers * 2
    shuffler.shuffle(shuffled_numbers)
    entries = list(weights.items())
    shuffler.shuffle(entries)
    sink_row = (
        json.dumps(shuffled_numbers),
        json.dumps(dict(entries), indent=1),
        json.dumps(millis),  # Connect's Timestamp: epoch milliseconds
        "1",
    )
    target = read_postgres_csv(postgres_csv([sink_row]), schema)
    assert target.equals(pa.Table.from_batches([source]))


def test_no_driver_rows_make_an_empty_canonical_batch() -> None:
    schema = schema_of(["int", "list<text>"])
    batch = from_python_rows([], schema)
    assert batch.num_rows == 0 and batch.schema == schema.arrow_schema


@settings(max_examples=300)
@given(
    sign=st.sampled_from([1, -1]),
    months=st.integers(0, 10**6),
    days=st.integers(0, 10**6),
    nanos=st.integers(0, 10**18),
)
def test_the_connectors_duration_literal_reads_back_exactly(
    sign: int, months: int, days: int, nanos: int
) -> None:
    """The sink writes a duration as CQL's literal, zero parts left out (``9mo460187176014ns``)."""
    literal = connector_value(
        parse_cql_type("duration"), Duration(sign * months, sign * days, sign * nanos), {}
    )
    assert duration_parts(literal) == (sign * months, sign * days, sign * nanos)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("9mo460187176014ns", (9, 0, 460_187_176_014)),
        ("-1y2w", (-12, -14, 0)),
        ("1h30m15s7ms3us2µs1ns", (0, 0, 5_415_007_005_001)),
        ("0ns", (0, 0, 0)),
        ("3mo4d5ns", (3, 4, 5)),
    ],
)
def test_cql_duration_literals(text: str, parts: tuple[int, int, int]) -> None:
    assert duration_parts(text) == parts


@pytest.mark.parametrize("text", ["", "-", "5", "1x", "mo", "1mo-2d", "1 mo"])
def test_text_that_is_no_duration_is_named(text: str) -> None:
    with pytest.raises(TypeError, match="is not a duration"):
        duration_parts(text)
