"""Step 2, diff: read one token slice from the source and diff it against the target index.

The slice's candidates (keys, kind, differing columns) are written to the scratch layout
for verification; the counts are the hash diff's, before any re-read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyarrow as pa

from cdc_pipelines.connect.secrets import with_mask_salt
from cdc_pipelines.postgres.target_index import read_slice_index
from cdc_pipelines.reconcile.diff import DiffResult, diff_slice
from cdc_pipelines.reconcile.scratch import ScratchLayout, write_candidates
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_by_id
from cdc_pipelines.rows.canonical import CanonicalSchema
from cdc_pipelines.scylla.reader import read_slice
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import ConnectionSettings

KIND_COLUMN = "kind"
DIFFERING_COLUMN = "differing_columns"


@dataclass(frozen=True)
class SliceOutcome:
    """The hash diff of one slice, before verification."""

    table: str
    slice_id: str
    token_range: str  # (lower, upper] of the slice on the Murmur3 ring
    source_rows: int
    target_rows: int
    missing: int
    extra: int
    mismatched: int
    duration_s: float
    candidates_path: str

    @property
    def candidates(self) -> int:
        return self.missing + self.extra + self.mismatched

    @property
    def rows_per_s(self) -> float:
        return self.source_rows / self.duration_s if self.duration_s > 0 else 0.0


def diff_candidates(result: DiffResult, schema: CanonicalSchema) -> pa.Table:
    """All discrepancy candidates of a slice in one table: keys, kind and the differing columns."""
    key_names = [c.name for c in schema.key_columns]
    no_columns = pa.list_(pa.string())
    parts = []
    for kind, table in (("missing", result.missing), ("extra", result.extra)):
        keys = table.select(key_names)
        parts.append(
            keys.append_column(
                KIND_COLUMN, pa.array([kind] * keys.num_rows, pa.string())
            ).append_column(DIFFERING_COLUMN, pa.array([[]] * keys.num_rows, no_columns))
        )
    mismatched = result.mismatched
    keys = mismatched.select(key_names)
    differing = (
        mismatched.column(DIFFERING_COLUMN).cast(no_columns)
        if DIFFERING_COLUMN in mismatched.column_names
        else pa.array([[]] * keys.num_rows, no_columns)
    )
    parts.append(
        keys.append_column(
            KIND_COLUMN, pa.array(["mismatched"] * keys.num_rows, pa.string())
        ).append_column(DIFFERING_COLUMN, differing)
    )
    return pa.concat_tables(parts)


def read_source_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    on_rows: Callable[[int], None] | None = None,
) -> pa.Table:
    """The slice's source rows in canonical form."""
    with cql_session(settings, table.scylla) as session:
        return read_slice(session, table, slice_by_id(slice_id, table.slices), on_rows=on_rows)


def diff_table_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    on_rows: Callable[[int], None] | None = None,
) -> SliceOutcome:
    """Read the slice from the source, diff it against the target index, store the candidates."""
    started = time.monotonic()
    table = with_mask_salt(table)
    schema = table.canonical
    token_slice = slice_by_id(slice_id, table.slices)
    source = read_source_slice(table, slice_id, settings, on_rows)
    target = read_slice_index(layout.index_dir, slice_id, schema)
    result = diff_slice(source, target, schema, table.tolerances)
    candidates_path = layout.candidates(slice_id)
    write_candidates(candidates_path, diff_candidates(result, schema))
    outcome = SliceOutcome(
        table=table.source,
        slice_id=slice_id,
        token_range=f"({token_slice.start}, {token_slice.end}]",
        source_rows=result.source_rows,
        target_rows=result.target_rows,
        missing=result.missing_count,
        extra=result.extra_count,
        mismatched=result.mismatched_count,
        duration_s=round(time.monotonic() - started, 3),
        candidates_path=str(candidates_path),
    )
    layout.slice_result(slice_id).write_text(json.dumps(asdict(outcome), indent=2))
    return outcome
