"""Target index: one streaming pass over the PostgreSQL table, bucketed by token slice.

PostgreSQL cannot compute Cassandra's Murmur3 token, so the replicated table is
streamed once with ``COPY (SELECT …) TO STDOUT (FORMAT CSV)`` into Arrow batches,
each row's token is computed client-side from its serialized partition key, and
the canonical rows (keys, compared columns, version, row hash) are appended to one
Arrow IPC file per slice under the scratch directory. Memory holds one batch.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as ipc
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.types import column_pg_type
from cdc_pipelines.reconcile.canonical import (
    POSTGRES_SESSION_SETTINGS,
    ROW_HASH_COLUMN,
    CanonicalSchema,
    from_postgres_text,
    postgres_csv_options,
)
from cdc_pipelines.reconcile.rowhash import hash_connection, with_row_hash
from cdc_pipelines.scylla.slices import slice_id, slice_indices
from cdc_pipelines.scylla.tokens import partition_tokens

TOKEN_COLUMN = "_token"
CSV_BLOCK_SIZE = 8 << 20
READ_AHEAD = 2  # parsed CSV blocks waiting for the indexing thread

T = TypeVar("T")
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


class _CopyStream(io.RawIOBase):
    """A readable file over psycopg's COPY TO STDOUT chunks."""

    def __init__(self, chunks: Iterator[bytes | bytearray | memoryview]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = bytes(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


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


def _read_ahead(batches: Iterable[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """``batches``, produced by a background thread up to ``depth`` ahead.

    Parsing the next CSV block (pyarrow, without the GIL) and draining psql's pipe then
    overlap with canonicalizing, hashing and writing this one; otherwise psql and the
    server stall whenever the 64 KiB pipe is full. An error in the producer is re-raised here;
    leaving early stops the producer.
    """
    handoff: queue.Queue[tuple[str, object]] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
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

    producer = threading.Thread(target=produce, name="target-index-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "done":
                producer.join()
                return
            if kind == "error":
                raise item  # type: ignore[misc]
            yield item  # type: ignore[misc]
    finally:
        # On an early exit the producer stops at its next batch, or when the stream it
        # reads is closed by the caller; it is not waited for.
        stop.set()


@contextmanager
def _copy_output(
    conn: psycopg.Connection, query: sql.Composed, dsn: str | None
) -> Iterator[IO[bytes]]:
    """The CSV bytes of ``query`` as a readable stream (psql when it can, else psycopg)."""
    psql = shutil.which("psql")
    if dsn and psql:
        options = " ".join(
            f"-c {k}={v.replace(' ', '')}" for k, v in POSTGRES_SESSION_SETTINGS.items()
        )
        env = {**os.environ, "PGOPTIONS": options}
        process = subprocess.Popen(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", query.as_string(conn)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert process.stdout is not None
        failed = False
        try:
            yield process.stdout
        except BaseException:
            # The reader gave up (bad data, interrupted): stop psql rather than let its
            # broken pipe replace the real error.
            failed = True
            process.kill()
            raise
        finally:
            process.stdout.close()
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            if process.wait() != 0 and not failed:
                raise ServiceError(
                    f"psql COPY failed ({process.returncode}): {stderr.strip()[:500]}; check that "
                    "the target table exists (cdc-pipelines ddl apply) and CDC_POSTGRES_DSN"
                )
        return
    with conn.cursor() as cursor:
        for setting, value in POSTGRES_SESSION_SETTINGS.items():
            cursor.execute("SELECT set_config(%s, %s, false)", (setting, value))
        with cursor.copy(query) as copy:
            yield io.BufferedReader(_CopyStream(iter(copy)), buffer_size=CSV_BLOCK_SIZE)


def copy_query(table: TableSpec, schema: CanonicalSchema) -> sql.Composed:
    columns = sql.SQL(", ").join(select_expression(table, name) for name in schema.column_names)
    return sql.SQL("COPY (SELECT {} FROM {}.{}) TO STDOUT (FORMAT CSV)").format(
        columns, sql.Identifier(table.target_schema), sql.Identifier(table.target_table)
    )


def build_target_index(
    conn: psycopg.Connection,
    table: TableSpec,
    schema: CanonicalSchema,
    slice_count: int,
    directory: Path,
    on_rows: Callable[[int], None] | None = None,
    dsn: str | None = None,
) -> TargetIndexManifest:
    """Stream the target table into per-slice Arrow IPC files in ``directory`` (replaced).

    With ``dsn`` and ``psql`` on PATH the COPY runs in psql, whose output pyarrow's
    CSV reader consumes in large blocks; through psycopg every row is one Python call
    (PostgreSQL sends a CopyData message per row), which measured about 4× slower.
    """
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
    names = list(schema.column_names)
    query = copy_query(table, schema)
    numeric_text = numeric_text_columns(table)
    try:
        with closing(hash_connection()) as hashing, _copy_output(conn, query, dsn) as stream:
            # An empty table gives no bytes at all, which pyarrow's reader refuses.
            empty = not stream.peek(1)  # type: ignore[attr-defined]
            reader = (
                iter(())
                if empty
                # Parsed in _read_ahead's thread, one block at a time: pyarrow's own
                # parallel read-ahead added about 100 MiB to the peak at no gain in speed.
                else pa_csv.open_csv(
                    stream, **postgres_csv_options(names, CSV_BLOCK_SIZE, threads=False)
                )
            )
            for batch in _read_ahead(reader):
                canonical = from_postgres_text(
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
    except psycopg.Error as exc:
        raise ServiceError(
            f"reading {table.target} from PostgreSQL failed: {str(exc).strip()}; check that the "
            "table exists (cdc-pipelines ddl apply) and CDC_POSTGRES_DSN"
        ) from None
    except (pa.ArrowInvalid, StopIteration) as exc:
        raise ReconcileError(f"{table.target}: the COPY output could not be read: {exc}") from None
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


def read_slice_index(directory: Path, slice_key: str, schema: CanonicalSchema) -> pa.Table:
    """The target rows of one slice (canonical columns and row hash)."""
    path = slice_file(directory, slice_key)
    if not path.exists():
        raise ReconcileError(f"target index slice {path} is missing; rebuild the target index")
    with pa.OSFile(str(path), "rb") as source:
        table = ipc.open_file(source).read_all()
    return table.drop_columns([TOKEN_COLUMN])
