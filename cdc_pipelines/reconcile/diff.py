"""The exact diff of one token slice: missing, extra and mismatched rows between two canonical tables.

Algorithm: one DuckDB full outer join on the exact key bits yields, in a single pass, the
number of key pairs, the source rows without a target row (missing), the target rows
without a source row (extra) and the pairs whose row hashes differ (candidates); a side
without a stored row hash has it computed inside that join. Duplicate
keys are proven absent by counting: with unique keys, pairs + missing = source rows and
pairs + extra = target rows; duplicates among unmatched rows are checked on those few rows.
Candidates then get the tolerant column verdict (``compare``); only the slice's tables are
held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cdc_pipelines.config import Tolerances
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.rows.canonical import (
    ROW_HASH_COLUMN,
    UUID_TYPE,
    CanonicalColumn,
    CanonicalSchema,
)
from cdc_pipelines.rows.compare import differing_columns
from cdc_pipelines.rows.rowhash import ROW_HASH_TYPE, exact_storage, row_hash_sql

DIFFERING_COLUMNS = "differing_columns"
SOURCE_VALUES = "source_values"
TARGET_VALUES = "target_values"
SAMPLE_DUPLICATES = 3
"""How many duplicate keys a duplicate-key error names."""
_ROW = "_row"
_HASH = "_hash"


@dataclass(frozen=True)
class DiffResult:
    """What differs in one slice; each table is in source (or target) row order.

    ``missing``: source rows whose key the target lacks. ``extra``: target rows whose key
    the source lacks. ``mismatched``: keys on both sides whose compared values differ
    beyond tolerance, with ``differing_columns`` and both sides' values (compared columns
    and version) in the ``source_values`` / ``target_values`` structs.
    """

    missing: pa.Table
    extra: pa.Table
    mismatched: pa.Table
    source_rows: int
    target_rows: int
    matched_rows: int
    hash_candidates: int

    @property
    def missing_count(self) -> int:
        return int(self.missing.num_rows)

    @property
    def extra_count(self) -> int:
        return int(self.extra.num_rows)

    @property
    def mismatched_count(self) -> int:
        return int(self.mismatched.num_rows)

    @property
    def discrepancy_count(self) -> int:
        return self.missing_count + self.extra_count + self.mismatched_count

    @property
    def is_clean(self) -> bool:
        return self.discrepancy_count == 0


def _check_canonical(table: pa.Table, schema: CanonicalSchema, side: str) -> None:
    for column in schema.columns:
        if column.name not in table.column_names:
            raise ReconcileError(
                f"table {schema.table}: the {side} slice lacks column {column.name!r}; "
                f"build it with reconcile.canonical"
            )
        actual = table.schema.field(column.name).type
        if actual != column.arrow_type:
            raise ReconcileError(
                f"table {schema.table}: {side} column {column.name!r} is {actual}, not the "
                f"canonical {column.arrow_type}; pass the table through canonical.normalize()"
            )
    for column in schema.key_columns:
        nulls = table.column(column.name).null_count
        if nulls:
            raise ReconcileError(
                f"table {schema.table}: key column {column.name!r} is NULL in {nulls} {side} "
                f"row(s); a primary key is never NULL, fix the {side} reader"
            )
    if ROW_HASH_COLUMN in table.column_names:
        actual = table.schema.field(ROW_HASH_COLUMN).type
        if actual != ROW_HASH_TYPE:
            raise ReconcileError(
                f"table {schema.table}: {side} column {ROW_HASH_COLUMN!r} is {actual}, "
                f"expected {ROW_HASH_TYPE}; recompute it with rowhash.with_row_hash()"
            )


def _join_key(values: pa.ChunkedArray, column: CanonicalColumn) -> list[pa.ChunkedArray]:
    """The key column as one or more exact, fast-to-join columns."""
    # Keys join on their exact bits: Cassandra tells 0.0 from -0.0 and one NaN from another.
    if column.cql_type.name == "float":
        return [_bits(values, np.int32)]
    if column.cql_type.name == "double":
        return [_bits(values, np.int64)]
    # A 16-byte UUID joins as two integers: DuckDB joins BIGINTs far faster than BLOBs.
    if column.arrow_type == UUID_TYPE:
        return _uuid_halves(values)
    return [exact_storage(values, column)]


def _bits(values: pa.ChunkedArray, dtype: type[np.signedinteger]) -> pa.ChunkedArray:
    chunks = [pa.array(chunk.to_numpy(zero_copy_only=False).view(dtype)) for chunk in values.chunks]
    return pa.chunked_array(chunks, pa.from_numpy_dtype(dtype))


def _uuid_halves(values: pa.ChunkedArray) -> list[pa.ChunkedArray]:
    halves: list[list[pa.Array]] = [[], []]
    for chunk in values.chunks:
        raw = np.frombuffer(chunk.buffers()[1], dtype=np.int64)
        pairs = raw[chunk.offset * 2 : (chunk.offset + len(chunk)) * 2].reshape(-1, 2)
        halves[0].append(pa.array(pairs[:, 0]))
        halves[1].append(pa.array(pairs[:, 1]))
    return [pa.chunked_array(h, pa.int64()) for h in halves]


def _join_frame(table: pa.Table, schema: CanonicalSchema) -> tuple[pa.Table, str]:
    """Keys (k0…), row index and either the stored hash or the compared columns (c0…).

    Returns the frame and the SQL expression of its row hash, computed inside the join when
    the table has no stored hash (cheaper than materializing it) and identical to
    ``rowhash.row_hashes``, so a stored target hash meets an inline source hash.
    """
    keys = schema.key_columns
    arrays = [part for c in keys for part in _join_key(table.column(c.name), c)]
    names = [f"k{i}" for i in range(len(arrays))]
    if ROW_HASH_COLUMN in table.column_names:
        arrays.append(table.column(ROW_HASH_COLUMN))
        names.append(_HASH)
        hash_expression = _HASH
    else:
        compared = schema.compared_columns
        arrays += [exact_storage(table.column(c.name), c) for c in compared]
        names += [f"c{i}" for i in range(len(compared))]
        hash_expression = row_hash_sql(len(compared))
    arrays.append(pa.array(np.arange(table.num_rows, dtype=np.int64)))
    names.append(_ROW)
    return pa.Table.from_arrays(arrays, names=names), hash_expression


def _key_names(frame: pa.Table) -> list[str]:
    return [name for name in frame.column_names if name.startswith("k")]


@dataclass(frozen=True)
class _Matching:
    pairs: int
    missing: npt.NDArray[np.int64]
    extra: npt.NDArray[np.int64]
    candidate_source: npt.NDArray[np.int64]
    candidate_target: npt.NDArray[np.int64]


_EMPTY = np.zeros(0, dtype=np.int64)


def _match(
    con: duckdb.DuckDBPyConnection, key_names: list[str], source_hash: str, target_hash: str
) -> _Matching:
    # Only synthetic names (k0…, c0…, _row, _hash) are interpolated: user identifiers never
    # reach SQL. The frames are registered Arrow tables; the hash expressions come from
    # _join_frame.
    keys = ", ".join(key_names)
    on = " AND ".join(f"s.{k} = t.{k}" for k in key_names)
    query = f"""
        SELECT
            count(*) FILTER (WHERE s.{_ROW} IS NOT NULL AND t.{_ROW} IS NOT NULL) AS pairs,
            list(s.{_ROW}) FILTER (WHERE t.{_ROW} IS NULL) AS missing,
            list(t.{_ROW}) FILTER (WHERE s.{_ROW} IS NULL) AS extra,
            list(struct_pack(s := s.{_ROW}, t := t.{_ROW})) FILTER (WHERE s.h <> t.h)
                AS candidates
        FROM (SELECT {keys}, {_ROW}, {source_hash} AS h FROM source_frame) AS s
        FULL OUTER JOIN (SELECT {keys}, {_ROW}, {target_hash} AS h FROM target_frame) AS t
        ON {on}
    """  # noqa: S608
    row = con.sql(query).to_arrow_table()

    def indices(name: str) -> npt.NDArray[np.int64]:
        values = row.column(name)[0].values
        return np.sort(values.to_numpy(zero_copy_only=False)) if values is not None else _EMPTY

    candidates = row.column("candidates")[0].values
    if candidates is None:
        pairs_s, pairs_t = _EMPTY, _EMPTY
    else:
        pairs_s = candidates.field("s").to_numpy(zero_copy_only=False)
        pairs_t = candidates.field("t").to_numpy(zero_copy_only=False)
        order = np.argsort(pairs_s, kind="stable")
        pairs_s, pairs_t = pairs_s[order], pairs_t[order]
    return _Matching(
        pairs=int(row.column("pairs")[0].as_py()),
        missing=indices("missing"),
        extra=indices("extra"),
        candidate_source=pairs_s,
        candidate_target=pairs_t,
    )


def _duplicate_keys(
    con: duckdb.DuckDBPyConnection,
    frame: pa.Table,
    rows: npt.NDArray[np.int64] | None,
) -> list[int]:
    """Row indices of a few keys that occur more than once (among ``rows`` only, if given)."""
    names = _key_names(frame)
    subset = frame.select([*names, _ROW])
    con.register("duplicate_probe", subset if rows is None else subset.take(rows))
    keys = ", ".join(names)
    query = (
        f"SELECT min({_ROW}) AS r FROM duplicate_probe GROUP BY {keys} "  # noqa: S608
        f"HAVING count(*) > 1 ORDER BY r LIMIT {SAMPLE_DUPLICATES}"
    )
    found = con.sql(query).to_arrow_table().column("r").to_pylist()
    con.unregister("duplicate_probe")
    return [int(r) for r in found]


def _duplicate_error(
    schema: CanonicalSchema, table: pa.Table, side: str, rows: list[int]
) -> ReconcileError:
    keys = table.select([c.name for c in schema.key_columns]).take(rows).to_pylist()
    shown = "; ".join(", ".join(f"{k}={v!r}" for k, v in key.items()) for key in keys)
    advice = (
        "the source read returned a row twice: check that the token sub-ranges do not overlap"
        if side == "source"
        else "the target table has no primary key on the key columns: add it"
    )
    return ReconcileError(
        f"table {schema.table}: duplicate key(s) on the {side} side: {shown}; {advice}"
    )


def _check_unique(
    con: duckdb.DuckDBPyConnection,
    schema: CanonicalSchema,
    tables: dict[str, pa.Table],
    frames: dict[str, pa.Table],
    matching: _Matching,
) -> None:
    """Raise on any duplicate key; cheap unless the counts already prove a duplicate exists."""
    # A matched key with several source rows inflates pairs past the target's matched rows,
    # and vice versa: an inconsistent count means a duplicate on either side.
    counts_hold = (
        matching.pairs + len(matching.missing) == tables["source"].num_rows
        and matching.pairs + len(matching.extra) == tables["target"].num_rows
    )
    sides = (("source", matching.missing), ("target", matching.extra))
    for side, unmatched in sides:
        if counts_hold and len(unmatched) < 2:
            continue
        rows = _duplicate_keys(con, frames[side], unmatched if counts_hold else None)
        if rows:
            raise _duplicate_error(schema, tables[side], side, rows)
    if not counts_hold:
        raise ReconcileError(
            f"table {schema.table}: the join counts are inconsistent but no duplicate key was "
            f"found; this is a bug in reconcile.diff, report it with the slice's tables"
        )


def _values_struct(table: pa.Table, schema: CanonicalSchema) -> pa.StructArray:
    names = [c.name for c in schema.compared_columns] + [schema.version_column]
    arrays = [table.column(n).combine_chunks() for n in names]
    return pa.StructArray.from_arrays(arrays, names=names)


def _mismatches(
    source: pa.Table,
    target: pa.Table,
    schema: CanonicalSchema,
    tolerances: Tolerances,
    matching: _Matching,
) -> pa.Table:
    left = source.take(matching.candidate_source)
    right = target.take(matching.candidate_target)
    columns = schema.compared_columns
    mask = differing_columns(left, right, columns, tolerances)
    differs = mask.any(axis=1)
    left, right, mask = left.filter(differs), right.filter(differs), mask[differs]
    names = pa.array([c.name for c in columns], pa.string())
    offsets = np.concatenate(([0], np.cumsum(mask.sum(axis=1)))).astype(np.int32)
    differing = pa.ListArray.from_arrays(pa.array(offsets), names.take(np.nonzero(mask)[1]))
    key_names = [c.name for c in schema.key_columns]
    arrays = [left.column(n) for n in key_names]
    arrays += [differing, _values_struct(left, schema), _values_struct(right, schema)]
    return pa.Table.from_arrays(
        arrays, names=[*key_names, DIFFERING_COLUMNS, SOURCE_VALUES, TARGET_VALUES]
    )


def diff_slice(
    source: pa.Table,
    target: pa.Table,
    schema: CanonicalSchema,
    tolerances: Tolerances,
) -> DiffResult:
    """Diff one slice's canonical source and target tables (row hashes computed if absent).

    Raises :class:`ReconcileError` when a key is duplicated on either side or a table is
    not in canonical form.
    """
    clash = {DIFFERING_COLUMNS, SOURCE_VALUES, TARGET_VALUES} & {c.name for c in schema.key_columns}
    if clash:
        raise ReconcileError(
            f"table {schema.table}: key column(s) {sorted(clash)} collide with the diff's "
            f"output columns; rename them in the declaration"
        )
    tables = {"source": source, "target": target}
    frames: dict[str, pa.Table] = {}
    hashes: dict[str, str] = {}
    con = duckdb.connect()
    try:
        for side, table in tables.items():
            _check_canonical(table, schema, side)
            frames[side], hashes[side] = _join_frame(table, schema)
            con.register(f"{side}_frame", frames[side])
        key_names = _key_names(frames["source"])
        matching = _match(con, key_names, hashes["source"], hashes["target"])
        _check_unique(con, schema, tables, frames, matching)
        mismatched = _mismatches(source, target, schema, tolerances, matching)
    finally:
        con.close()
    columns = list(schema.column_names)
    return DiffResult(
        missing=source.select(columns).take(matching.missing),
        extra=target.select(columns).take(matching.extra),
        mismatched=mismatched,
        source_rows=source.num_rows,
        target_rows=target.num_rows,
        matched_rows=matching.pairs,
        hash_candidates=len(matching.candidate_source),
    )


def discrepancy_keys(result: DiffResult, schema: CanonicalSchema) -> pa.Table:
    """Every discrepant key with its kind (missing/extra/mismatched): the input of verification."""
    key_names = [c.name for c in schema.key_columns]
    parts = []
    for kind, table in (
        ("missing", result.missing),
        ("extra", result.extra),
        ("mismatched", result.mismatched),
    ):
        keys = table.select(key_names)
        parts.append(keys.append_column("kind", pa.array([kind] * keys.num_rows, pa.string())))
    return pa.concat_tables(parts)
