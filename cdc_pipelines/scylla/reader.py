"""Source reader: one token slice of a table as a canonical Arrow table.

Each sub-range of the slice is read with ``token(pk) > ? AND token(pk) <= ?``,
paged, several sub-ranges at a time; every row carries the write time of its
non-key columns (``WRITETIME``), whose maximum becomes the row's version in µs.

A partition that holds static values and no clustering row comes back as one row whose
clustering columns are NULL. It is no row of the table (PostgreSQL cannot key it), so the
scan leaves it out.

A request that fails because its connection did (dropped, timed out, no host left) raises
:class:`~cdc_pipelines.scylla.session.CqlConnectionError`, which callers may retry with a
fresh session; any other failure raises a plain :class:`ServiceError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import TokenRange, TokenSlice, cql_token_bounds
from cdc_pipelines.rows.canonical import from_python_rows
from cdc_pipelines.rows.layout import version_columns
from cdc_pipelines.rows.mask import mask_row
from cdc_pipelines.scylla.session import CqlConnectionError, is_connection_failure, quote_cql

DEFAULT_SUBRANGES_PER_SLICE = 16
ROWS_PER_BATCH = 50_000
NO_VERSION = 0


@dataclass(frozen=True)
class SourceQuery:
    """The CQL that reads one token range of a table, and how its rows map to canonical rows."""

    cql: str
    names: tuple[str, ...]  # the canonical columns selected, version excluded
    timestamped: int
    spec: TableSpec
    mask_salt: bytes | None = field(default=None, repr=False)
    clustering: tuple[int, ...] = ()  # positions of the clustering columns in ``names``

    @classmethod
    def for_table(cls, table: ReplicatedTable) -> SourceQuery:
        spec, schema = table.spec, table.canonical
        canonical = tuple(c.name for c in schema.columns if c.name != schema.version_column)
        stamped = [c.name for c in version_columns(spec)]
        partition = ", ".join(quote_cql(n) for n in spec.partition_key)
        columns = [quote_cql(n) for n in canonical] + [
            f"WRITETIME({quote_cql(n)})" for n in stamped
        ]
        cql = (
            f"SELECT {', '.join(columns)} FROM {quote_cql(spec.keyspace)}.{quote_cql(spec.table)} "
            f"WHERE token({partition}) > ? AND token({partition}) <= ?"
        )
        clustering = tuple(canonical.index(n) for n in spec.clustering_key)
        return cls(cql, canonical, len(stamped), spec, table.mask_salt, clustering)

    def is_static_only(self, row: Sequence[object]) -> bool:
        """A partition's static values without a clustering row (its clustering key is NULL)."""
        return any(row[i] is None for i in self.clustering)

    def canonical_row(self, row: Sequence[object]) -> list[object]:
        selected = len(self.names)
        stamps = [t for t in row[selected:] if t is not None]
        version = max(stamps) if stamps else NO_VERSION  # type: ignore[type-var]
        values = row[:selected]
        if self.spec.mask:
            values = mask_row(self.spec, self.names, values, self.mask_salt)
        return [*values, version]


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
    query = SourceQuery.for_table(replicated)
    try:
        statement = session.prepare(query.cql)
    except Exception as exc:  # InvalidRequest names the unknown column or table
        error = CqlConnectionError if is_connection_failure(exc) else ServiceError
        raise error(
            f"{table.source}: cannot prepare the scan query ({type(exc).__name__}: {exc})"
        ) from None
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
        if query.is_static_only(result):
            continue
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
                failed = isinstance(rows, BaseException) and is_connection_failure(rows)
                error = CqlConnectionError if failed else ServiceError
                raise error(f"{table.source}: a token-range scan failed: {rows!r}")
            yield from rows
    except ServiceError:
        raise
    except Exception as exc:  # dropped connections, timeouts, unavailable replicas
        if is_connection_failure(exc):
            raise CqlConnectionError(
                f"{table.source}: the connection of a token-range scan failed "
                f"({type(exc).__name__}: {exc})"
            ) from None
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
