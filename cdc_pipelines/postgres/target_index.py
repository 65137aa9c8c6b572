"""Target index: one streaming pass over the PostgreSQL table, bucketed by token slice.

PostgreSQL cannot compute Cassandra's Murmur3 token, so the replicated table is read
once into Arrow batches (typed, over binary COPY: see ``arrow_read``), each row's token
is computed client-side from its serialized partition key, and the canonical rows (keys,
compared columns, version, row hash) are appended to one Arrow IPC file per slice under
the scratch directory. Memory holds a few batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.arrow_read import read_target_batches
from cdc_pipelines.postgres.types import column_pg_type
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_id, slice_indices
from cdc_pipelines.ring.tokens import partition_tokens
from cdc_pipelines.rows.canonical import (
    ROW_HASH_COLUMN,
    CanonicalSchema,
    from_postgres_columns,
)
from cdc_pipelines.rows.rowhash import hash_connection, with_row_hash

TOKEN_COLUMN = "_token"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TargetIndexManifest:
    """What one target-index pass wrote: rows per slice and when the pass started."""

    table: str
    slice_count: int
    rows: int
    rows_per_slice: dict[str, int]
    started_at_us: int
    duration_s: float

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, directory: Path) -> TargetIndexManifest:
        try:
            return cls(**json.loads((directory / MANIFEST).read_text()))
        except FileNotFoundError:
            raise ReconcileError(
                f"no target index in {directory}; build it first (the target_index asset or "
                "'cdc-pipelines reconcile')"
            ) from None


def index_schema(schema: CanonicalSchema) -> pa.Schema:
    return schema.arrow_schema.append(pa.field(ROW_HASH_COLUMN, pa.uint64())).append(
        pa.field(TOKEN_COLUMN, pa.int64())
    )


def slice_file(directory: Path, slice_key: str) -> Path:
    return directory / f"slice={slice_key}.arrow"


def numeric_text_columns(table: TableSpec) -> frozenset[str]:
    """Decimal and varint columns stored as ``numeric``: :func:`select_expression` reads them
    as canonical text already (see ``from_postgres_text``'s ``numeric_text``)."""
    return frozenset(
        c.name
        for c in table.replicated_columns
        if c.cql_type.name in ("decimal", "varint") and column_pg_type(table, c).sql == "numeric"
    )


def select_expression(
    table: TableSpec, name: str, alias: sql.Identifier | None = None
) -> sql.Composable:
    """A target column as the canonical reader expects it.

    Arrays come as JSON text. ``numeric`` decimals come through ``trim_scale`` (the canonical
    form drops a compared decimal's scale; a key keeps it) and varints too, so PostgreSQL's
    output needs no client-side normalization. Everything else comes as stored.
    """
    column: sql.Composable = (
        sql.Identifier(name)
        if alias is None
        else sql.SQL("{}.{}").format(alias, sql.Identifier(name))
    )
    declared = {c.name for c in table.columns}
    if name not in declared:
        return column
    spec = table.column(name)
    if column_pg_type(table, spec).sql.endswith("[]"):
        return sql.SQL("to_json({})").format(column)
    if name in numeric_text_columns(table) and (
        spec.cql_type.name == "varint" or name not in table.primary_key
    ):
        return sql.SQL("trim_scale({})").format(column)
    return column


def build_target_index(
    dsn: str,
    replicated: ReplicatedTable,
    directory: Path,
    on_rows: Callable[[int], None] | None = None,
) -> TargetIndexManifest:
    """Stream the target table into per-slice Arrow IPC files in ``directory`` (replaced).

    The table is read typed over binary COPY (``arrow_read``), one batch ahead of the
    canonicalizing, hashing and writing of the current one.
    """
    table, schema, slice_count = replicated.spec, replicated.canonical, replicated.slices
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("slice=*.arrow"):
        old.unlink()
    started = time.monotonic()
    started_at_us = time.time_ns() // 1000
    out_schema = index_schema(schema)
    writers: dict[int, ipc.RecordBatchFileWriter] = {}
    counts = [0] * slice_count
    key_columns = [(c.name, c.cql_type) for c in schema.partition_key]
    user_types = {name: fields for name, fields in schema.user_types}
    numeric_text = numeric_text_columns(table)
    try:
        with (
            closing(hash_connection(threads=1)) as hashing,
            read_target_batches(dsn, table, schema, select_expression) as batches,
        ):
            for batch in batches:
                canonical = from_postgres_columns(
                    pa.Table.from_batches([batch]), schema, numeric_text=numeric_text
                )
                hashed = with_row_hash(canonical, schema, hashing)
                tokens = partition_tokens(hashed, key_columns, user_types)
                indexed = hashed.append_column(TOKEN_COLUMN, tokens)
                slices = slice_indices(tokens, slice_count)
                _write_by_slice(
                    indexed, slices, writers, directory, out_schema, slice_count, counts
                )
                if on_rows:
                    on_rows(indexed.num_rows)
    finally:
        for writer in writers.values():
            writer.close()
    for index in range(slice_count):
        if index not in writers:
            with ipc.new_file(slice_file(directory, slice_id(index, slice_count)), out_schema):
                pass
    manifest = TargetIndexManifest(
        table=table.source,
        slice_count=slice_count,
        rows=sum(counts),
        rows_per_slice={slice_id(i, slice_count): n for i, n in enumerate(counts)},
        started_at_us=started_at_us,
        duration_s=round(time.monotonic() - started, 3),
    )
    manifest.write(directory)
    return manifest


def _write_by_slice(
    table: pa.Table,
    slices: object,
    writers: dict[int, ipc.RecordBatchFileWriter],
    directory: Path,
    out_schema: pa.Schema,
    slice_count: int,
    counts: list[int],
) -> None:
    import numpy as np

    indices = np.asarray(slices)
    order = np.argsort(indices, kind="stable")
    sorted_slices = indices[order]
    boundaries = np.flatnonzero(np.diff(sorted_slices)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(order)]))
    ordered = table.take(pa.array(order))
    for start, end in zip(starts, ends, strict=True):
        if start == end:
            continue
        index = int(sorted_slices[start])
        writer = writers.get(index)
        if writer is None:
            path = slice_file(directory, slice_id(index, slice_count))
            writer = ipc.new_file(path, out_schema)
            writers[index] = writer
        part = ordered.slice(int(start), int(end - start))
        writer.write_table(part.cast(out_schema))
        counts[index] += part.num_rows


def read_slice_index(
    directory: Path, slice_key: str, schema: CanonicalSchema, *, tokens: bool = False
) -> pa.Table:
    """The target rows of one slice (canonical columns and row hash; with ``tokens``, each
    row's partition token too, in :data:`TOKEN_COLUMN`)."""
    path = slice_file(directory, slice_key)
    if not path.exists():
        raise ReconcileError(f"target index slice {path} is missing; rebuild the target index")
    with pa.OSFile(str(path), "rb") as source:
        table = ipc.open_file(source).read_all()
    return table if tokens else table.drop_columns([TOKEN_COLUMN])
