"""Partition-key tokens: serialization equals the driver's CQL encoding, vectorized hash equals the C hash."""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from cassandra import cqltypes
from cassandra.util import Date, SortedSet, Time
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.ring import tokens as token_module
from cdc_pipelines.ring.slices import MAX_TOKEN, MIN_TOKEN
from cdc_pipelines.ring.tokens import (
    MIN_VECTOR_GROUP,
    SerializedKeys,
    murmur3_token,
    murmur3_tokens,
    murmur3_tokens_fixed,
    partition_tokens,
    reference_partition_tokens,
    serialize_partition_keys,
    table_tokens,
)
from cdc_pipelines.rows.canonical import (
    CanonicalColumn,
    CanonicalSchema,
    ColumnRole,
    canonical_arrow_type,
    from_python_rows,
)

EPOCH = dt.datetime(1970, 1, 1)
MIN_MILLIS = int((dt.datetime(1, 1, 1) - EPOCH).total_seconds() * 1000)
MAX_MILLIS = int((dt.datetime(9999, 12, 31, 23, 59, 59) - EPOCH).total_seconds() * 1000)
MIN_DAYS = (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days
MAX_DAYS = (dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days
NANOS_PER_DAY = 86_400 * 10**9

# Driver values a partition key column of each type can hold (what cassandra-driver returns).
KEY_VALUES: dict[str, st.SearchStrategy[object]] = {
    "tinyint": st.integers(-(2**7), 2**7 - 1),
    "smallint": st.integers(-(2**15), 2**15 - 1),
    "int": st.integers(-(2**31), 2**31 - 1),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "varint": st.integers(-(2**130), 2**130),
    # Built from text: exact, where Decimal arithmetic would round to 28 digits.
    "decimal": st.builds(
        lambda unscaled, scale: Decimal(f"{unscaled}E-{scale}"),
        st.integers(-(10**30), 10**30),
        st.integers(0, 40),
    ),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "boolean": st.booleans(),
    "text": st.text(st.characters(exclude_categories=("Cs",)), min_size=1),
    "ascii": st.text(st.characters(max_codepoint=127), min_size=1),
    "blob": st.binary(min_size=1),
    "uuid": st.uuids(),
    "timeuuid": st.uuids(version=1),
    "timestamp": st.integers(MIN_MILLIS, MAX_MILLIS).map(
        lambda ms: EPOCH + dt.timedelta(milliseconds=ms)
    ),
    "date": st.integers(MIN_DAYS, MAX_DAYS).map(Date),
    "time": st.integers(0, NANOS_PER_DAY - 1).map(Time),
    "inet": st.ip_addresses().map(str),
}
KEY_TYPES = sorted(KEY_VALUES)


def key_schema(types: Sequence[str]) -> CanonicalSchema:
    """A canonical schema whose partition key is one column per type (k0, k1, …)."""
    columns = [
        CanonicalColumn(
            f"k{i}",
            parse_cql_type(t),
            ColumnRole.PARTITION_KEY,
            canonical_arrow_type(parse_cql_type(t)),
        )
        for i, t in enumerate(types)
    ]
    columns.append(CanonicalColumn("version", CqlType("bigint"), ColumnRole.VERSION, pa.int64()))
    return CanonicalSchema("ks.keys", tuple(columns), "ms")


def canonical_keys(
    types: Sequence[str], rows: Sequence[Sequence[object]]
) -> tuple[pa.Table, list[tuple[str, CqlType]]]:
    schema = key_schema(types)
    batch = from_python_rows([(*row, 0) for row in rows], schema)
    return pa.Table.from_batches([batch]), [(c.name, c.cql_type) for c in schema.partition_key]


def driver_bytes(cql_name: str, value: object) -> bytes:
    return bytes(cqltypes._cqltypes[cql_name].serialize(value, 4))


def composite(parts: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(p)) + p + b"\x00" for p in parts)


@settings(deadline=None)
@given(st.integers(0, 70), st.lists(st.binary(min_size=70, max_size=70), min_size=1, max_size=40))
def test_vectorized_murmur3_equals_the_driver_for_every_length(
    length: int, blobs: list[bytes]
) -> None:
    keys = [b[:length] for b in blobs]
    matrix = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), length)
    assert murmur3_tokens_fixed(matrix).tolist() == [murmur3_token(k) for k in keys]


@settings(deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=30), st.integers(0, 3))
def test_grouped_murmur3_equals_the_driver_for_mixed_lengths(
    keys: list[bytes], repeat: int
) -> None:
    # Repeating the list pushes some lengths over the vector threshold, others stay per-row.
    keys = keys * (1 + repeat * MIN_VECTOR_GROUP)
    lengths = np.array([len(k) for k in keys], dtype=np.int64)
    serialized = SerializedKeys(
        np.frombuffer(b"".join(keys), dtype=np.uint8),
        np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
    )
    assert murmur3_tokens(serialized).tolist() == [murmur3_token(k) for k in keys]


def test_known_tokens_of_small_keys() -> None:
    # token(1) of an int key, as every Cassandra cluster reports it.
    assert murmur3_token(struct.pack(">i", 1)) == -4069959284402364209
    assert murmur3_token(b"") == MIN_TOKEN


def test_minimum_hash_becomes_the_maximum_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_module, "_driver_murmur3", lambda key: MIN_TOKEN)
    assert murmur3_token(b"any key") == MAX_TOKEN


@pytest.mark.parametrize("cql_name", KEY_TYPES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_single_key_serialization_equals_the_driver(cql_name: str, data: st.DataObject) -> None:
    values = data.draw(st.lists(KEY_VALUES[cql_name], min_size=1, max_size=20))
    table, key_columns = canonical_keys([cql_name], [(v,) for v in values])
    keys = serialize_partition_keys(table, key_columns)
    assert [keys.key(i) for i in range(len(values))] == [driver_bytes(cql_name, v) for v in values]


@pytest.mark.parametrize("cql_name", KEY_TYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_vectorized_tokens_equal_the_per_row_reference(cql_name: str, data: st.DataObject) -> None:
    values = data.draw(st.lists(KEY_VALUES[cql_name], min_size=1, max_size=150))
    table, key_columns = canonical_keys([cql_name], [(v,) for v in values])
    expected = [murmur3_token(driver_bytes(cql_name, v)) for v in values]
    assert partition_tokens(table, key_columns).to_pylist() == expected
    assert reference_partition_tokens(table, key_columns).to_pylist() == expected


@settings(max_examples=60, deadline=None)
@given(
    types=st.lists(st.sampled_from(KEY_TYPES), min_size=2, max_size=4),
    data=st.data(),
)
def test_composite_keys_equal_cassandras_encoding(types: list[str], data: st.DataObject) -> None:
    rows = data.draw(st.lists(st.tuples(*(KEY_VALUES[t] for t in types)), min_size=1, max_size=80))
    table, key_columns = canonical_keys(types, rows)
    expected_keys = [
        composite([driver_bytes(t, v) for t, v in zip(types, row, strict=True)]) for row in rows
    ]
    keys = serialize_partition_keys(table, key_columns)
    assert [keys.key(i) for i in range(len(rows))] == expected_keys
    expected = [murmur3_token(k) for k in expected_keys]
    assert partition_tokens(table, key_columns).to_pylist() == expected
    assert reference_partition_tokens(table, key_columns).to_pylist() == expected


def test_table_tokens_use_the_schema_partition_key() -> None:
    table, key_columns = canonical_keys(["int", "text"], [(1, "a"), (2, "b")])
    assert table_tokens(table, key_schema(["int", "text"])).equals(
        partition_tokens(table, key_columns)
    )


@settings(deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=12))
def test_frozen_set_serializes_in_comparator_order(values: list[int]) -> None:
    table, key_columns = canonical_keys(["frozen<set<int>>"], [(SortedSet(values),)])
    element = cqltypes._cqltypes["int"]
    expected = (
        cqltypes._cqltypes["set"].apply_parameters([element]).serialize(sorted(set(values)), 4)
    )
    assert serialize_partition_keys(table, key_columns).key(0) == expected


def test_frozen_uuid_set_follows_cassandras_uuid_order() -> None:
    # Cassandra orders UUIDs by version first, v1 by timestamp: not by their 128-bit value.
    time_based = uuid.UUID("00000001-0000-1000-8000-000000000000")
    random_v4 = uuid.UUID("00000000-0000-4000-8000-000000000000")
    table, key_columns = canonical_keys(
        ["frozen<set<uuid>>"], [(SortedSet([random_v4, time_based]),)]
    )
    raw = serialize_partition_keys(table, key_columns).key(0)
    assert raw[8:24] == time_based.bytes
    assert raw[28:44] == random_v4.bytes


def test_frozen_map_list_tuple_serialize_like_the_driver() -> None:
    cases: list[tuple[str, object, bytes]] = [
        (
            "frozen<list<text>>",
            ["b", "a"],
            cqltypes._cqltypes["list"]
            .apply_parameters([cqltypes._cqltypes["text"]])
            .serialize(["b", "a"], 4),
        ),
        (
            "frozen<map<int, text>>",
            {2: "x", -1: "y"},
            cqltypes._cqltypes["map"]
            .apply_parameters([cqltypes._cqltypes["int"], cqltypes._cqltypes["text"]])
            .serialize({-1: "y", 2: "x"}, 4),
        ),
        (
            "frozen<tuple<int, text>>",
            (7, None),
            cqltypes._cqltypes["tuple"]
            .apply_parameters([cqltypes._cqltypes["int"], cqltypes._cqltypes["text"]])
            .serialize((7, None), 4),
        ),
    ]
    for type_text, value, expected in cases:
        table, key_columns = canonical_keys([type_text], [(value,)])
        assert serialize_partition_keys(table, key_columns).key(0) == bytes(expected), type_text


def test_duration_cannot_be_a_partition_key() -> None:
    table = pa.table({"k": pa.array(["1mo0d0ns"])})
    with pytest.raises(ReconcileError, match="duration cannot be part of a partition key"):
        partition_tokens(table, [("k", CqlType("duration"))])


def test_null_partition_key_is_refused() -> None:
    table = pa.table({"k": pa.array([1, None], pa.int32())})
    with pytest.raises(ReconcileError, match="NULL in 1 row"):
        partition_tokens(table, [("k", CqlType("int"))])


def test_missing_key_column_is_refused() -> None:
    with pytest.raises(ReconcileError, match="missing"):
        partition_tokens(pa.table({"x": [1]}), [("k", CqlType("int"))])


def test_empty_text_key_gets_the_minimum_token() -> None:
    table = pa.table({"k": pa.array(["", "a"])})
    tokens = partition_tokens(table, [("k", CqlType("text"))]).to_pylist()
    assert tokens == [MIN_TOKEN, murmur3_token(b"a")]
