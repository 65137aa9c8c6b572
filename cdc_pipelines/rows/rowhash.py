"""A 64-bit hash of each canonical row's compared columns, computed by DuckDB over Arrow.

Equal canonical rows hash equal; NULL and '' hash differently, and so do the same values in
different columns (DuckDB combines per-column hashes in declaration order). Measured on
2 cores: DuckDB's variadic ``hash()`` ~27M rows/s, ``hash(struct_pack(…))`` ~25M rows/s;
pyarrow exposes no row hash and a numpy hash needs per-row Python for strings (see
``benchmarks/bench_diff_core.py``). The hash depends on the DuckDB version, recorded in
``ROW_HASH_ALGORITHM`` so a stored target index can be recognised as stale.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.rows.canonical import ROW_HASH_COLUMN, CanonicalColumn, CanonicalSchema

ROW_HASH_TYPE = pa.uint64()
ROW_HASH_ALGORITHM = f"duckdb-{duckdb.__version__}-hash"
"""Identifies the hash function; persisted hashes from another algorithm must be recomputed."""
_FRAME_NAME = "canonical_rows"


def exact_storage(values: pa.ChunkedArray | pa.Array, column: CanonicalColumn) -> pa.ChunkedArray:
    """The column as DuckDB can read it without losing a bit.

    Temporal values become their integer counts (DuckDB's TIME has µs only); floats are
    kept as floats for hashing (``-0.0``/NaN payload differences are settled by the
    tolerant comparison).
    """
    name = column.cql_type.name
    if name in ("timestamp", "time"):
        return values.cast(pa.int64())
    if name == "date":
        return values.cast(pa.int32())
    return values


def row_hash_sql(column_count: int) -> str:
    """The DuckDB expression of the row hash over columns named ``c0``…``c{n-1}``."""
    if column_count == 0:
        return "0::UBIGINT"
    return f"hash({', '.join(f'c{i}' for i in range(column_count))})"


def hash_connection(threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to pass to :func:`row_hashes` for many batches (connecting costs
    about as much as hashing 100k rows); close it when done."""
    connection = duckdb.connect()
    if threads is not None:
        connection.execute(f"SET threads = {int(threads)}")
    return connection


def row_hashes(
    table: pa.Table,
    schema: CanonicalSchema,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.ChunkedArray:
    """The uint64 hash of every row's compared columns, in row order."""
    columns = schema.compared_columns
    missing = [c.name for c in columns if c.name not in table.column_names]
    if missing:
        raise ReconcileError(
            f"table {schema.table}: cannot hash rows without the compared columns {missing}; "
            f"canonicalize the table first"
        )
    if not columns or table.num_rows == 0:
        return pa.chunked_array([pa.array(np.zeros(table.num_rows, np.uint64))], ROW_HASH_TYPE)
    frame = pa.Table.from_arrays(
        [exact_storage(table.column(c.name), c) for c in columns],
        names=[f"c{i}" for i in range(len(columns))],
    )
    con = connection or duckdb.connect()
    try:
        con.register(_FRAME_NAME, frame)
        # Columns are renamed c0…: no user identifier is ever interpolated into the SQL.
        query = f"SELECT {row_hash_sql(len(columns))} AS h FROM {_FRAME_NAME}"  # noqa: S608
        result = con.sql(query).to_arrow_table()
        con.unregister(_FRAME_NAME)
    finally:
        if connection is None:
            con.close()
    return result.column("h").cast(ROW_HASH_TYPE).combine_chunks()


def with_row_hash(
    table: pa.Table,
    schema: CanonicalSchema,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The table with ``ROW_HASH_COLUMN`` set (replaced when present)."""
    hashes = row_hashes(table, schema, connection)
    if ROW_HASH_COLUMN in table.column_names:
        return table.set_column(table.column_names.index(ROW_HASH_COLUMN), ROW_HASH_COLUMN, hashes)
    return table.append_column(ROW_HASH_COLUMN, hashes)
