"""The slice diff reports exactly the injected drift, is symmetric, and refuses duplicate keys."""

from __future__ import annotations

import datetime as dt
import math
import random
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipelines.config import TableSpec, Tolerances
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.reconcile.diff import (
    DIFFERING_COLUMNS,
    SOURCE_VALUES,
    TARGET_VALUES,
    DiffResult,
    diff_slice,
    discrepancy_keys,
)
from cdc_pipelines.rows.canonical import (
    ROW_HASH_COLUMN,
    CanonicalColumn,
    CanonicalSchema,
    ColumnRole,
    from_python_rows,
)
from cdc_pipelines.rows.rowhash import ROW_HASH_TYPE, row_hashes, with_row_hash

SPEC = TableSpec.model_validate(
    {
        "source": "shop.orders",
        "target": "public.orders",
        "partition_key": ["customer"],
        "clustering_key": ["item"],
        "columns": {
            "customer": "int",
            "item": "text",
            "price": "double",
            "weight": "float",
            "note": "text",
            "placed": "timestamp",
            "payload": "blob",
            "quantity": "int",
            "tags": "set<text>",
        },
    }
)
SCHEMA = CanonicalSchema.from_table(SPEC, version_column="_cdc_version_us")
TOLERANCES = Tolerances(float_abs=1e-6, float_rel=1e-9, timestamp_precision="ms")
WITHIN_TOLERANCE = 5e-7
BEYOND_TOLERANCE = 1.0
COMPARED = [c.name for c in SCHEMA.compared_columns]
Key = tuple[int, str]
Row = list[object]

# Mutations of a source row in the target, and the columns each one makes differ.
MUTATIONS: dict[str, tuple[str, ...]] = {
    "same": (),
    "delete": (),
    "version_only": (),
    "price_within_tolerance": (),
    "price_beyond_tolerance": ("price",),
    "nan_both_sides": (),
    "nan_versus_number": ("price",),
    "null_versus_empty_note": ("note",),
    "note_changed": ("note",),
    "placed_next_millisecond": ("placed",),
    "payload_changed": ("payload",),
    "quantity_and_tags_changed": ("quantity", "tags"),
}

rows_values = st.tuples(
    st.floats(-1e3, 1e3, allow_nan=False),
    st.floats(-1e3, 1e3, allow_nan=False, width=32),
    st.none() | st.text(max_size=4),
    st.integers(0, 10**12).map(lambda ms: dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)),
    st.none() | st.binary(max_size=4),
    st.none() | st.integers(-(2**31), 2**31 - 1),
    st.none() | st.frozensets(st.text(max_size=2), max_size=3),
)


@dataclass(frozen=True)
class Scenario:
    source: list[Row]
    target: list[Row]
    missing: set[Key] = field(default_factory=set)
    extra: set[Key] = field(default_factory=set)
    mismatched: dict[Key, set[str]] = field(default_factory=dict)


def _mutate(row: Row, mutation: str) -> Row:
    changed = list(row)
    price, note, placed = 2, 4, 5
    if mutation == "version_only":
        changed[-1] = int(changed[-1]) + 1  # type: ignore[call-overload]
    elif mutation == "price_within_tolerance":
        changed[price] = float(row[price]) + WITHIN_TOLERANCE  # type: ignore[arg-type]
    elif mutation == "price_beyond_tolerance":
        changed[price] = float(row[price]) + BEYOND_TOLERANCE  # type: ignore[arg-type]
    elif mutation == "nan_both_sides":
        row[price] = changed[price] = math.nan
    elif mutation == "nan_versus_number":
        changed[price] = math.nan
    elif mutation == "null_versus_empty_note":
        row[note], changed[note] = "", None
    elif mutation == "note_changed":
        changed[note] = f"{row[note] or ''}!"
    elif mutation == "placed_next_millisecond":
        changed[placed] = row[placed] + dt.timedelta(milliseconds=1)  # type: ignore[operator]
    elif mutation == "payload_changed":
        changed[placed + 1] = (row[placed + 1] or b"") + b"\x00"  # type: ignore[operator]
    elif mutation == "quantity_and_tags_changed":
        changed[placed + 2] = (row[placed + 2] or 0) // 2 - 1  # type: ignore[operator]
        changed[placed + 3] = frozenset({"changed"} | set(row[placed + 3] or ()))  # type: ignore[arg-type]
    return changed


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    keys = draw(
        st.lists(st.tuples(st.integers(-30, 30), st.text(max_size=2)), unique=True, max_size=40)
    )
    extras = draw(
        st.lists(st.tuples(st.integers(31, 60), st.text(max_size=2)), unique=True, max_size=5)
    )
    scenario = Scenario(source=[], target=[])
    for position, key in enumerate(keys):
        values = list(draw(rows_values))
        source_row: Row = [*key, *values, 1_000 + position]
        mutation = draw(st.sampled_from(sorted(MUTATIONS)))
        target_row = _mutate(source_row, mutation)
        scenario.source.append(source_row)
        if mutation == "delete":
            scenario.missing.add(key)
            continue
        scenario.target.append(target_row)
        if MUTATIONS[mutation]:
            scenario.mismatched[key] = set(MUTATIONS[mutation])
    for key in extras:
        scenario.target.append([*key, *draw(rows_values), 7])
        scenario.extra.add(key)
    random.Random(draw(st.integers(0, 1000))).shuffle(scenario.target)
    return scenario


def canonical(rows: list[Row]) -> pa.Table:
    return pa.Table.from_batches([from_python_rows(rows, SCHEMA)], schema=SCHEMA.arrow_schema)


def keys_of(table: pa.Table) -> set[Key]:
    return {(r["customer"], r["item"]) for r in table.select(["customer", "item"]).to_pylist()}


def mismatches_of(result: DiffResult) -> dict[Key, set[str]]:
    return {
        (r["customer"], r["item"]): set(r[DIFFERING_COLUMNS]) for r in result.mismatched.to_pylist()
    }


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_diff_reports_exactly_the_injected_drift(scenario: Scenario) -> None:
    result = diff_slice(canonical(scenario.source), canonical(scenario.target), SCHEMA, TOLERANCES)
    assert keys_of(result.missing) == scenario.missing
    assert keys_of(result.extra) == scenario.extra
    assert mismatches_of(result) == scenario.mismatched
    assert result.matched_rows == len(scenario.source) - len(scenario.missing)
    assert result.source_rows == len(scenario.source) and result.target_rows == len(scenario.target)
    assert result.hash_candidates >= result.mismatched_count
    assert result.is_clean == (
        not scenario.missing and not scenario.extra and not scenario.mismatched
    )


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_diff_of_a_table_with_itself_is_empty(scenario: Scenario) -> None:
    table = canonical(scenario.source)
    result = diff_slice(table, table, SCHEMA, TOLERANCES)
    assert result.is_clean
    assert result.matched_rows == table.num_rows
    assert result.hash_candidates == 0


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_diff_is_symmetric(scenario: Scenario) -> None:
    source, target = canonical(scenario.source), canonical(scenario.target)
    forward = diff_slice(source, target, SCHEMA, TOLERANCES)
    backward = diff_slice(target, source, SCHEMA, TOLERANCES)
    assert forward.missing.equals(backward.extra)
    assert forward.extra.equals(backward.missing)
    assert mismatches_of(forward) == mismatches_of(backward)
    swapped = {
        (r["customer"], r["item"]): (r[TARGET_VALUES], r[SOURCE_VALUES])
        for r in backward.mismatched.to_pylist()
    }
    for row in forward.mismatched.to_pylist():
        source_values, target_values = swapped[(row["customer"], row["item"])]
        assert str(row[SOURCE_VALUES]) == str(source_values)
        assert str(row[TARGET_VALUES]) == str(target_values)


def test_mismatch_carries_both_values_and_versions() -> None:
    row: Row = [1, "a", 2.0, 1.0, "old", dt.datetime(2024, 1, 1), None, 3, None, 10]
    changed = [*row[:4], "new", *row[5:-1], 11]
    result = diff_slice(canonical([row]), canonical([changed]), SCHEMA, TOLERANCES)
    (mismatch,) = result.mismatched.to_pylist()
    assert mismatch[DIFFERING_COLUMNS] == ["note"]
    assert (mismatch[SOURCE_VALUES]["note"], mismatch[TARGET_VALUES]["note"]) == ("old", "new")
    assert (
        mismatch[SOURCE_VALUES]["_cdc_version_us"],
        mismatch[TARGET_VALUES]["_cdc_version_us"],
    ) == (10, 11)


def test_precomputed_row_hashes_give_the_same_result() -> None:
    rows: list[Row] = [
        [i, "x", float(i), 1.0, None, dt.datetime(2024, 1, 1), None, i, None, 1] for i in range(20)
    ]
    changed = [list(r) for r in rows]
    changed[3][4] = "drift"
    plain = diff_slice(canonical(rows), canonical(changed), SCHEMA, TOLERANCES)
    hashed = diff_slice(
        with_row_hash(canonical(rows), SCHEMA),
        with_row_hash(canonical(changed), SCHEMA),
        SCHEMA,
        TOLERANCES,
    )
    assert mismatches_of(plain) == mismatches_of(hashed) == {(3, "x"): {"note"}}


@settings(max_examples=30, deadline=None)
@given(scenarios())
def test_a_stored_target_hash_meets_an_inline_source_hash(scenario: Scenario) -> None:
    # The target index stores row hashes; the source side is hashed inside the join.
    source, target = canonical(scenario.source), canonical(scenario.target)
    stored = diff_slice(source, with_row_hash(target, SCHEMA), SCHEMA, TOLERANCES)
    inline = diff_slice(source, target, SCHEMA, TOLERANCES)
    assert stored.hash_candidates == inline.hash_candidates
    assert mismatches_of(stored) == mismatches_of(inline) == scenario.mismatched
    same = diff_slice(source, with_row_hash(source, SCHEMA), SCHEMA, TOLERANCES)
    assert same.hash_candidates == 0


def _row(customer: int, item: str = "x") -> Row:
    return [customer, item, 1.0, 1.0, None, dt.datetime(2024, 1, 1), None, None, None, 1]


@pytest.mark.parametrize(
    ("source", "target", "side"),
    [
        ([_row(1), _row(1), _row(2)], [_row(1), _row(2)], "source"),
        ([_row(1), _row(5), _row(5)], [_row(1)], "source"),
        ([_row(1)], [_row(1), _row(1)], "target"),
        ([_row(1)], [_row(9), _row(9), _row(1)], "target"),
    ],
)
def test_duplicate_keys_are_an_error_naming_the_key(
    source: list[Row], target: list[Row], side: str
) -> None:
    with pytest.raises(ReconcileError, match=f"duplicate key.*{side} side: customer=") as raised:
        diff_slice(canonical(source), canonical(target), SCHEMA, TOLERANCES)
    assert "item='x'" in str(raised.value)


def test_float_keys_compare_by_their_bits() -> None:
    version = CanonicalColumn("v", CqlType("bigint"), ColumnRole.VERSION, pa.int64())
    key = CanonicalColumn("k", CqlType("double"), ColumnRole.PARTITION_KEY, pa.float64())
    schema = CanonicalSchema("ks.f", (key, version), "ms")
    source = pa.table({"k": pa.array([-0.0, 1.5]), "v": pa.array([1, 1], pa.int64())})
    target = pa.table({"k": pa.array([0.0, 1.5]), "v": pa.array([1, 1], pa.int64())})
    result = diff_slice(source, target, schema, TOLERANCES)
    assert (result.missing_count, result.extra_count, result.matched_rows) == (1, 1, 1)


def test_non_canonical_tables_are_refused_with_the_fix() -> None:
    table = canonical([_row(1)])
    wrong_type = table.set_column(2, "price", table.column("price").cast(pa.float32()))
    with pytest.raises(ReconcileError, match=r"canonical\.normalize"):
        diff_slice(wrong_type, table, SCHEMA, TOLERANCES)
    with pytest.raises(ReconcileError, match="lacks column 'note'"):
        diff_slice(table, table.drop_columns(["note"]), SCHEMA, TOLERANCES)
    null_key = table.set_column(0, "customer", pa.array([None], pa.int32()))
    with pytest.raises(ReconcileError, match="NULL in 1 source row"):
        diff_slice(null_key, table, SCHEMA, TOLERANCES)


def test_discrepancy_keys_list_every_kind() -> None:
    source = canonical([_row(1), _row(2)])
    target_rows = [_row(2), _row(3)]
    target_rows[0][4] = "changed"
    result = diff_slice(source, canonical(target_rows), SCHEMA, TOLERANCES)
    keys = discrepancy_keys(result, SCHEMA).to_pylist()
    assert sorted((k["customer"], k["kind"]) for k in keys) == [
        (1, "missing"),
        (2, "mismatched"),
        (3, "extra"),
    ]


def test_row_hash_tells_null_from_empty_and_column_from_column() -> None:
    rows = [
        [1, "x", 1.0, 1.0, None, dt.datetime(2024, 1, 1), b"", None, None, 1],
        [1, "x", 1.0, 1.0, "", dt.datetime(2024, 1, 1), b"", None, None, 1],
        [1, "x", 1.0, 1.0, "", dt.datetime(2024, 1, 1), None, None, None, 1],
        [1, "x", 1.0, 1.0, None, dt.datetime(2024, 1, 1), b"", None, None, 99],
    ]
    hashes = row_hashes(canonical(rows), SCHEMA).to_pylist()
    assert len(set(hashes[:3])) == 3
    assert hashes[3] == hashes[0]  # the version is not a compared column
    assert row_hashes(canonical(rows), SCHEMA).type == ROW_HASH_TYPE
    assert with_row_hash(canonical(rows), SCHEMA).column(ROW_HASH_COLUMN).to_pylist() == hashes


@settings(deadline=None)
@given(st.lists(rows_values, min_size=1, max_size=20))
def test_equal_canonical_rows_hash_equal(values: list[tuple[object, ...]]) -> None:
    rows: list[Row] = [[i, "k", *v, 1] for i, v in enumerate(values)]
    first = row_hashes(canonical(rows), SCHEMA).to_pylist()
    again = row_hashes(canonical([list(r) for r in reversed(rows)]), SCHEMA).to_pylist()
    assert first == list(reversed(again))


def test_tables_with_no_compared_columns_diff_by_key() -> None:
    spec = TableSpec.model_validate(
        {"source": "ks.k", "target": "public.k", "partition_key": ["id"], "columns": {"id": "uuid"}}
    )
    schema = CanonicalSchema.from_table(spec, version_column="v")
    one, two = uuid.uuid4(), uuid.uuid4()
    source = pa.Table.from_batches([from_python_rows([(one, 1), (two, 1)], schema)])
    target = pa.Table.from_batches([from_python_rows([(two, 5)], schema)])
    result = diff_slice(source, target, schema, TOLERANCES)
    assert result.missing.column("id").to_pylist() == [one.bytes]
    assert result.mismatched_count == 0


def test_compared_columns_constant_matches_the_declaration() -> None:
    assert COMPARED == ["price", "weight", "note", "placed", "payload", "quantity", "tags"]


UUID_SPEC = TableSpec.model_validate(
    {
        "source": "ks.u",
        "target": "public.u",
        "partition_key": ["id"],
        "columns": {"id": "uuid", "value": "bigint"},
    }
)
UUID_SCHEMA = CanonicalSchema.from_table(UUID_SPEC, version_column="v")


@settings(max_examples=60, deadline=None)
@given(
    st.sets(st.uuids(), max_size=30),
    st.sets(st.uuids(), max_size=30),
    st.sets(st.uuids(), max_size=5),
)
def test_uuid_keys_join_exactly(
    shared: set[uuid.UUID], source_only: set[uuid.UUID], changed: set[uuid.UUID]
) -> None:
    shared, changed = shared - source_only, changed - source_only
    source_rows = [(u, 1, 1) for u in shared | source_only | changed]
    target_rows = [(u, 1, 1) for u in shared] + [(u, 2, 1) for u in changed - shared]
    source = pa.Table.from_batches([from_python_rows(source_rows, UUID_SCHEMA)])
    target = pa.Table.from_batches([from_python_rows(target_rows, UUID_SCHEMA)])
    result = diff_slice(source, target, UUID_SCHEMA, TOLERANCES)
    assert {uuid.UUID(bytes=b) for b in result.missing.column("id").to_pylist()} == source_only
    assert {
        uuid.UUID(bytes=b) for b in result.mismatched.column("id").to_pylist()
    } == changed - shared
    assert result.extra_count == 0


def test_empty_sides_diff_to_all_missing_or_all_extra() -> None:
    empty = canonical([])
    rows = canonical([_row(1), _row(2)])
    assert diff_slice(empty, empty, SCHEMA, TOLERANCES).is_clean
    assert diff_slice(empty, rows, SCHEMA, TOLERANCES).extra_count == 2
    only_source = diff_slice(rows, empty, SCHEMA, TOLERANCES)
    assert (only_source.missing_count, only_source.matched_rows) == (2, 0)
    assert only_source.missing.schema == SCHEMA.arrow_schema
