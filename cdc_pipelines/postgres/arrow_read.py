"""Typed reads of a target table straight into Arrow, over ADBC's binary COPY.

A column whose PostgreSQL type has an exact Arrow counterpart for its declared CQL type is
read as stored: integers, floats, booleans, text, bytea, uuid, timestamps, dates and times.
Every other column is read as PostgreSQL's own text (numeric through ``trim_scale``, arrays
as JSON; see ``target_index.select_expression``) for ``canonical.from_postgres_columns`` to
parse. Binary output spares the server the number and date formatting that dominates a text
COPY, and the client a CSV parse.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.rows.canonical import POSTGRES_SESSION_SETTINGS, CanonicalSchema

BATCH_BYTES = 8 << 20  # ADBC's target size of one record batch
READ_AHEAD = 2  # batches waiting for the indexing thread
STOP_WAIT_S = 0.5  # how long a producer may take to notice a stop before its read is cancelled

T = TypeVar("T")
log = logging.getLogger(__name__)
TextExpression = Callable[[TableSpec, str], sql.Composable]

_INTEGERS = {"tinyint": "int2", "smallint": "int2", "int": "int4", "bigint": "int8"}
NATIVE_POSTGRES_TYPES: Mapping[str, frozenset[str]] = {
    **{cql: frozenset({pg}) for cql, pg in _INTEGERS.items()},
    "counter": frozenset({"int8"}),
    "float": frozenset({"float4"}),
    "double": frozenset({"float8"}),
    "boolean": frozenset({"bool"}),
    "text": frozenset({"text", "varchar"}),
    "ascii": frozenset({"text", "varchar"}),
    "blob": frozenset({"bytea"}),
    "uuid": frozenset({"uuid"}),
    "timeuuid": frozenset({"uuid"}),
    "timestamp": frozenset({"timestamptz", "timestamp"}),
    "date": frozenset({"date"}),
    "time": frozenset({"time"}),
}
"""CQL type → the PostgreSQL types (``pg_type.typname``) read without a text round trip."""

_COLUMN_TYPES = """SELECT a.attname, t.typname FROM pg_attribute AS a
JOIN pg_type AS t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped"""


def _connect(dsn: str) -> adbc.Connection:
    try:
        return adbc.connect(dsn)
    except adbc_driver_manager.Error as exc:
        raise ServiceError(
            f"cannot connect to PostgreSQL for the target read: {_first_line(exc)}; check "
            "CDC_POSTGRES_DSN and that PostgreSQL is up (cdc-pipelines stack status)"
        ) from None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def column_types(cursor: adbc.Cursor, table: TableSpec) -> dict[str, str]:
    """The PostgreSQL type name of every column of the target table."""
    relation = sql.Identifier(table.target_schema, table.target_table).as_string()
    cursor.execute(_COLUMN_TYPES, (relation,))
    types = {str(name): str(type_name) for name, type_name in cursor.fetchall()}
    if not types:
        raise ServiceError(
            f"target table {table.target} does not exist in PostgreSQL; create it "
            "(cdc-pipelines ddl apply) or check CDC_POSTGRES_DSN"
        )
    return types


def typed_select(
    table: TableSpec,
    schema: CanonicalSchema,
    types: Mapping[str, str],
    text_expression: TextExpression,
) -> str:
    """``SELECT`` of the canonical columns: native where exact, else ``(expression)::text``.

    ``text_expression(table, name)`` is the column as the text reader expects it.
    """
    missing = [name for name in schema.column_names if name not in types]
    if missing:
        raise ReconcileError(
            f"target table {table.target} lacks the columns {missing}; apply the DDL plan "
            "(cdc-pipelines ddl plan) or fix the declaration"
        )
    parts: list[sql.Composable] = []
    for column in schema.columns:
        if types[column.name] in NATIVE_POSTGRES_TYPES.get(column.cql_type.name, ()):
            parts.append(sql.Identifier(column.name))
        else:
            parts.append(
                sql.SQL("({})::text AS {}").format(
                    text_expression(table, column.name), sql.Identifier(column.name)
                )
            )
    return (
        sql.SQL("SELECT {} FROM {}")
        .format(
            sql.SQL(", ").join(parts),
            sql.Identifier(table.target_schema, table.target_table),
        )
        .as_string()
    )


@contextmanager
def read_ahead(
    batches: Iterable[T], depth: int = READ_AHEAD, cancel: Callable[[], None] | None = None
) -> Iterator[Iterator[T]]:
    """``batches``, produced by a background thread up to ``depth`` ahead.

    Reading the next batch (ADBC and pyarrow release the GIL) then overlaps with
    canonicalizing, hashing and writing this one. An error in the producer is re-raised in
    the consumer. Leaving the context stops the producer: at its next hand-off, or, when it
    is blocked reading, through ``cancel`` (which must be safe to call from another thread).
    With a ``cancel``, the producer has left ``batches`` before the context exits.
    """
    handoff: queue.Queue[tuple[str, object]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(("batch", batch)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))
            return
        put(("done", None))

    def consume() -> Iterator[T]:
        while True:
            kind, item = handoff.get()
            if kind == "done":
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]

    producer = threading.Thread(target=produce, name="target-read-ahead", daemon=True)
    producer.start()
    try:
        yield consume()
    finally:
        stop.set()
        producer.join(STOP_WAIT_S)
        if producer.is_alive() and cancel is not None:
            try:
                cancel()
            except Exception as exc:  # the consumer's own error, if any, is the one to report
                log.warning("cancelling the target read failed: %s", exc)
            # Cancelled or not, the producer leaves the stream before the caller closes it
            # (without a cancel, once its read returns and it sees the stop).
            producer.join()


@contextmanager
def read_target_batches(
    dsn: str, table: TableSpec, schema: CanonicalSchema, text_expression: TextExpression
) -> Iterator[Iterator[pa.RecordBatch]]:
    """The target table's canonical columns as record batches, read ahead in a thread.

    Leaving the context early cancels the query and waits for the reading thread.
    """
    with _connect(dsn) as conn, conn.cursor() as cursor:
        try:
            for setting, value in POSTGRES_SESSION_SETTINGS.items():
                cursor.execute(f"SET {setting} TO '{value}'")
            query = typed_select(table, schema, column_types(cursor, table), text_expression)
            cursor.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)}
            )
            cursor.execute(query)
            reader = cursor.fetch_record_batch()
        except adbc_driver_manager.Error as exc:
            raise _read_failed(table, exc) from None
        try:
            with read_ahead(_batches(reader, table), cancel=cursor.adbc_cancel) as batches:
                yield batches
        finally:
            reader.close()


def _batches(reader: pa.RecordBatchReader, table: TableSpec) -> Iterator[pa.RecordBatch]:
    # fetch_record_batch hands out pyarrow's own reader: a failure mid-stream (the server
    # ended the query, the connection dropped) arrives as an Arrow error or OSError.
    try:
        yield from reader
    except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
        raise _read_failed(table, exc) from None


def _read_failed(table: TableSpec, exc: BaseException) -> ServiceError:
    return ServiceError(
        f"reading {table.target} from PostgreSQL failed: {_first_line(exc)}; check that the "
        "table exists (cdc-pipelines ddl apply) and CDC_POSTGRES_DSN"
    )
