"""Step 2, diff: read one token slice from the source and diff it against the target index.

The slice's candidates (keys, kind, differing columns) are written to the scratch layout
for verification; the counts are the hash diff's, before any re-read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from cassandra.cluster import Session

from cdc_pipelines.config import ScyllaConnection
from cdc_pipelines.connect.secrets import with_mask_salt
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.target_index import TOKEN_COLUMN, read_slice_index
from cdc_pipelines.reconcile.diff import DiffResult, diff_slice
from cdc_pipelines.reconcile.scratch import ScratchLayout, owner_only, write_candidates
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import MIN_TOKEN, TokenRange, TokenSlice, slice_by_id
from cdc_pipelines.rows.canonical import CanonicalSchema
from cdc_pipelines.scylla.key_reads import range_matchable
from cdc_pipelines.scylla.reader import DEFAULT_SUBRANGES_PER_SLICE, read_ranges
from cdc_pipelines.scylla.session import cql_session, is_connection_failure
from cdc_pipelines.settings import ConnectionSettings

KIND_COLUMN = "kind"
DIFFERING_COLUMN = "differing_columns"
SLICE_READ_ATTEMPTS = 3
"""Reads of a slice whose connection fails, the first one included, before the run gives up."""
SLICE_RETRY_BACKOFF_S = 1.0
"""The wait before the n-th new read of a slice is n times this."""

SessionFactory = Callable[
    [ConnectionSettings, ScyllaConnection | None], AbstractContextManager[Session]
]
logger = logging.getLogger(__name__)


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
    # A slice verified by one scan (see route_slice): not diffed beforehand; verification
    # reads every source row, and the counts above are those of its scan once it ran.
    whole: bool = False
    # Of those, one whose target holds most rows: each chunk of the scan is diffed against
    # the target index as it is read, and only its candidates are verified.
    diff_in_scan: bool = False

    @property
    def candidates(self) -> int:
        return self.missing + self.extra + self.mismatched

    @property
    def to_verify(self) -> bool:
        """Whether verification has anything to do for this slice."""
        return self.whole or self.candidates > 0

    @property
    def rows_per_s(self) -> float:
        return self.source_rows / self.duration_s if self.duration_s > 0 else 0.0

    @classmethod
    def read(cls, path: Path) -> SliceOutcome:
        """The diff's result as :func:`diff_table_slice` wrote it, or an error saying to diff first."""
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ReconcileError(
                f"the slice's diff result {path} cannot be read ({exc}); reconcile the slice "
                "again (its diff comes before its verification and repair)"
            ) from None


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


def no_candidates(schema: CanonicalSchema) -> pa.Table:
    """An empty candidates table, with the columns :func:`diff_candidates` gives."""
    fields = [schema.arrow_schema.field(c.name) for c in schema.key_columns]
    return pa.table(
        {
            **{f.name: pa.array([], f.type) for f in fields},
            KIND_COLUMN: pa.array([], pa.string()),
            DIFFERING_COLUMN: pa.array([], pa.list_(pa.string())),
        }
    )


def read_source_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    on_rows: Callable[[int], None] | None = None,
    *,
    session_factory: SessionFactory = cql_session,
    ranges: Sequence[TokenRange] | None = None,
) -> pa.Table:
    """The slice's source rows in canonical form (only those of ``ranges``, when given).

    When the read fails because its connection did (shut down, timed out, no host left: see
    ``scylla.session.is_connection_failure``), it is started again on a new session
    from ``session_factory``, up to :data:`SLICE_READ_ATTEMPTS` reads in all, each retry
    logged at WARNING; then a :class:`ServiceError` names the table, the slice and the fix.
    Any other failure (a value that cannot be read, a query the server refuses) ends the read
    at once. ``on_rows`` hears of each row once: a new read reports only the rows beyond
    those the failed one reported.
    """
    token_slice = slice_by_id(slice_id, table.slices)
    if ranges is None:
        ranges = token_slice.sub_ranges(DEFAULT_SUBRANGES_PER_SLICE)
    reported = 0
    last_failure = ""
    for attempt in range(1, SLICE_READ_ATTEMPTS + 1):
        read = 0

        def count(rows: int) -> None:
            nonlocal read, reported
            read += rows
            if on_rows is not None and read > reported:
                on_rows(read - reported)
                reported = read

        try:
            with session_factory(settings, table.scylla) as session:
                return read_ranges(session, table, ranges, on_rows=count)
        except Exception as exc:  # the driver's and the reader's; only connection failures retry
            if not is_connection_failure(exc):
                raise
            last_failure = str(exc) or type(exc).__name__
            if attempt < SLICE_READ_ATTEMPTS:
                delay = SLICE_RETRY_BACKOFF_S * attempt
                logger.warning(
                    "%s: slice %s: the connection failed on read %d of %d (%s); reading the "
                    "slice again on a new session in %g s",
                    table.source,
                    slice_id,
                    attempt,
                    SLICE_READ_ATTEMPTS,
                    last_failure,
                    delay,
                )
                time.sleep(delay)
    raise ServiceError(
        f"{table.source}: slice {slice_id} (tokens ({token_slice.start}, {token_slice.end}]) "
        f"could not be read: its connection failed on all {SLICE_READ_ATTEMPTS} attempts "
        f"(last: {last_failure}); check that the CQL endpoint is up and reachable "
        "(CDC_SCYLLA_CONTACT_POINTS, CDC_SCYLLA_PORT), that it speaks scylla.protocol_version, "
        "and lower scylla.concurrency if it is overloaded; then run the reconciliation again"
    )


LOAD_SHARE = 0.1
"""A slice whose target holds less than this share of its source rows is loaded whole: one
scan after the sink's catch-up verifies every row, instead of a diff scan and a re-scan."""
DRIFT_SHARE = 0.3
"""A slice whose sample has candidates for at least this share of its rows is verified by
one scan diffed chunk by chunk: the diff would find so many that verification re-scans the
slice anyway (``verify_step.RESCAN_SHARE``)."""
DRIFT_SAMPLE_ROWS = 200
"""Rows a slice's sample must hold for its drift to route it: fewer tell too little (and
the slice is then small enough that either route costs little)."""
LOAD_SAMPLE_PARTS = 32
"""A slice is routed by the first of this many parts of it: its rows estimate the slice's
(for loading) and its diff the slice's drift. It is read once: a slice's diff reads only
the rest."""


class SliceRoute(StrEnum):
    """How a slice is reconciled (see :func:`route_slice`)."""

    DIFF = "diff"  # diff the whole slice now, verify the candidates after the catch-up
    LOAD = "load"  # the target lacks most rows: verify every row of one later scan
    DIFF_IN_SCAN = "diff in scan"  # much drift: one later scan, each chunk diffed as read


def in_token_range(index: pa.Table, token_range: TokenRange) -> pa.Table:
    """The rows of a target index (read with its tokens) whose token lies in ``token_range``
    (a non-wrapping range). A range starting at ``MIN_TOKEN`` holds it too: the first slice
    owns that token (``TokenSlice.contains``), which only a target row can have."""
    tokens = index.column(TOKEN_COLUMN)
    after = pc.greater_equal if token_range.start == MIN_TOKEN else pc.greater
    inside = pc.and_(after(tokens, token_range.start), pc.less_equal(tokens, token_range.end))
    return index.filter(inside)


def route_slice(
    table: ReplicatedTable, sample: pa.Table, sample_index: pa.Table, target_rows: int
) -> SliceRoute:
    """Route a slice by the diff of its sample part (one of :data:`LOAD_SAMPLE_PARTS`;
    tokens are hashed, so parts hold alike shares): :attr:`SliceRoute.LOAD` when its target
    holds under :data:`LOAD_SHARE` of the source rows estimated from the sample,
    :attr:`SliceRoute.DIFF_IN_SCAN` when the sample's candidates are at least
    :data:`DRIFT_SHARE` of its rows (at least :data:`DRIFT_SAMPLE_ROWS`), else
    :attr:`SliceRoute.DIFF`. Only a slice whose keys can be matched between a scan and a
    key is verified by one scan."""
    if not range_matchable(table.spec):
        return SliceRoute.DIFF
    if target_rows < LOAD_SHARE * sample.num_rows * LOAD_SAMPLE_PARTS:
        return SliceRoute.LOAD
    sampled = diff_slice(sample, sample_index, table.canonical, table.tolerances)
    found = sampled.missing_count + sampled.extra_count + sampled.mismatched_count
    if sample.num_rows >= max(1, DRIFT_SAMPLE_ROWS) and found >= DRIFT_SHARE * sample.num_rows:
        return SliceRoute.DIFF_IN_SCAN
    return SliceRoute.DIFF


@owner_only
def diff_table_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    on_rows: Callable[[int], None] | None = None,
) -> SliceOutcome:
    """Route the slice by a diff of its first part (:func:`route_slice`). A slice to verify
    by one scan is left to verification; any other is read, diffed against the target index,
    and its candidates stored."""
    started = time.monotonic()
    table = with_mask_salt(table)
    schema = table.canonical
    token_slice = slice_by_id(slice_id, table.slices)
    index = read_slice_index(layout.index_dir, slice_id, schema, tokens=True)
    target = index.drop_columns([TOKEN_COLUMN])
    candidates_path = layout.candidates(slice_id)
    route, sample = SliceRoute.DIFF, None
    sample_range = token_slice.sub_ranges(LOAD_SAMPLE_PARTS)[0]
    if range_matchable(table.spec):
        sample = read_source_slice(table, slice_id, settings, ranges=[sample_range])
        sample_index = in_token_range(index, sample_range).drop_columns([TOKEN_COLUMN])
        route = route_slice(table, sample, sample_index, target.num_rows)
    if route is not SliceRoute.DIFF:
        write_candidates(candidates_path, no_candidates(schema))
        outcome = SliceOutcome(
            table=table.source,
            slice_id=slice_id,
            token_range=f"({token_slice.start}, {token_slice.end}]",
            source_rows=0,
            target_rows=target.num_rows,
            missing=0,
            extra=0,
            mismatched=0,
            duration_s=round(time.monotonic() - started, 3),
            candidates_path=str(candidates_path),
            whole=True,
            diff_in_scan=route is SliceRoute.DIFF_IN_SCAN,
        )
        layout.slice_result(slice_id).write_text(json.dumps(asdict(outcome), indent=2))
        return outcome
    if sample is None:
        source = read_source_slice(table, slice_id, settings, on_rows)
    else:  # the sample is the slice's first part: read the rest
        if on_rows is not None and sample.num_rows:
            on_rows(sample.num_rows)
        rest = after_first_part(sample_range, token_slice)
        source = (
            pa.concat_tables(
                [sample, read_source_slice(table, slice_id, settings, on_rows, ranges=rest)]
            )
            if rest
            else sample
        )
    result = diff_slice(source, target, schema, table.tolerances)
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


def after_first_part(first: TokenRange, token_slice: TokenSlice) -> tuple[TokenRange, ...]:
    """The slice's tokens after its ``first`` part, cut for one scan (none when it is all)."""
    if first.end >= token_slice.end:
        return ()
    return TokenRange(first.end, token_slice.end).split(DEFAULT_SUBRANGES_PER_SLICE)
