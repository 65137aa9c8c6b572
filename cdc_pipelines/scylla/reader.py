"""Source reader: one token slice of a table as a canonical Arrow table.

Each sub-range of the slice is read with ``token(pk) > ? AND token(pk) <= ?``,
paged, several sub-ranges at a time; every row carries the write time of its
non-key columns (``WRITETIME``), whose maximum becomes the row's version in µs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from cdc_pipelines.config import TableSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import TokenRange, TokenSlice, cql_token_bounds
from cdc_pipelines.rows.canonical import CanonicalSchema, from_python_rows
from cdc_pipelines.scylla.session import quote_cql

DEFAULT_SUBRANGES_PER_SLICE = 16
ROWS_PER_BATCH = 50_000
NO_VERSION = 0


def has_cell_timestamp(cql_type: CqlType) -> bool:
    """WRITETIME applies to single cells: scalars and frozen values, not multi-cell collections."""
    return cql_type.is_scalar or cql_type.frozen


@dataclass(frozen=True)
class SourceQuery:
    """The CQL that reads one token range of a table, and how its rows map to canonical rows."""

    cql: str
    selected: int
    timestamped: int

    @classmethod
    def for_table(cls, table: TableSpec, schema: CanonicalSchema) -> SourceQuery:
        canonical = [c.name for c in schema.columns if c.name != schema.version_column]
        key_names = set(table.primary_key)
        stamped = [
            c.name
            for c in table.replicated_columns
            if c.name not in key_names and has_cell_timestamp(c.cql_type)
        ]
        partition = ", ".join(quote_cql(n) for n in table.partition_key)
        columns = [quote_cql(n) for n in canonical] + [
            f"WRITETIME({quote_cql(n)})" for n in stamped
        ]
        cql = (
            f"SELECT {', '.join(columns)} FROM {quote_cql(table.keyspace)}.{quote_cql(table.table)} "
            f"WHERE token({partition}) > ? AND token({partition}) <= ?"
        )
        return cls(cql=cql, selected=len(canonical), timestamped=len(stamped))

    def canonical_row(self, row: Sequence[object]) -> list[object]:
        stamps = [t for t in row[self.selected :] if t is not None]
        version = max(stamps) if stamps else NO_VERSION  # type: ignore[type-var]
        return [*row[: self.selected], version]


def read_ranges(
    session: Session,
    replicated: ReplicatedTable,
    ranges: Sequence[TokenRange],
    *,
    on_rows: Callable[[int], None] | None = None,
) -> pa.Table:
    """Read the token ranges and return one canonical table (rows in no particular order).

    Ranges are read ``replicated.scylla.concurrency`` at a time, ``fetch_size`` rows a page.
    """
    table, schema = replicated.spec, replicated.canonical
    concurrency, fetch_size = replicated.scylla.concurrency, replicated.scylla.fetch_size
    query = SourceQuery.for_table(table, schema)
    try:
        statement = session.prepare(query.cql)
    except Exception as exc:  # InvalidRequest names the unknown column or table
        raise ServiceError(f"{table.source}: cannot prepare the scan query: {exc}") from None
    statement.fetch_size = fetch_size
    bounds = cql_token_bounds(ranges)
    batches: list[pa.RecordBatch] = []
    pending: list[list[object]] = []
    results = execute_concurrent_with_args(
        session,
        statement,
        bounds,
        concurrency=concurrency,
        raise_on_first_error=True,
        results_generator=True,
    )
    for result in _rows_of(results, table):
        pending.append(query.canonical_row(result))
        if len(pending) >= ROWS_PER_BATCH:
            batches.append(from_python_rows(pending, schema))
            if on_rows:
                on_rows(len(pending))
            pending = []
    if pending or not batches:
        batches.append(from_python_rows(pending, schema))
        if on_rows and pending:
            on_rows(len(pending))
    return pa.Table.from_batches(batches, schema=schema.arrow_schema)


def _rows_of(results: Iterable[object], table: TableSpec) -> Iterable[Sequence[object]]:
    try:
        for outcome in results:
            success: bool = outcome[0]  # type: ignore[index]
            rows: Iterable[Sequence[object]] = outcome[1]  # type: ignore[index]
            if not success:
                raise ServiceError(f"{table.source}: a token-range scan failed: {rows}")
            yield from rows
    except ServiceError:
        raise
    except Exception as exc:  # timeouts, unavailable replicas
        raise ServiceError(
            f"{table.source}: the token-range scan failed ({type(exc).__name__}: {exc}); "
            "lower the concurrency or raise the consistency timeout"
        ) from None


def read_slice(
    session: Session,
    replicated: ReplicatedTable,
    token_slice: TokenSlice,
    *,
    subranges: int = DEFAULT_SUBRANGES_PER_SLICE,
    on_rows: Callable[[int], None] | None = None,
) -> pa.Table:
    """One slice, split into ``subranges`` token ranges."""
    return read_ranges(session, replicated, token_slice.sub_ranges(subranges), on_rows=on_rows)
