"""The repair plan: one table's verified discrepancies, checked and converted once.

:func:`plan_repair` fails on a bad value here, before anything is written; the
:class:`RepairPlan` it returns is what :func:`apply_repair` and the dry-run script write.

Row contract for upserts
------------------------
Each upsert row is a sequence ordered like :func:`upsert_layout`: the table's replicated
columns in declaration order, **masked columns left out** (repair never writes them: the
sink's mask cannot be reproduced here, and an update keeps the target's masked value), then
the version (source write time in µs, an ``int``). Values are what cassandra-driver returns,
with one exception: timestamps must be **aware** datetimes (the driver's naive values are UTC;
:mod:`cdc_pipelines.reconcile.verify` hands them over aware). Each value is converted for the
column's PostgreSQL type (:func:`cdc_pipelines.postgres.types.column_pg_type`): collections,
tuples and UDTs to canonical JSON for jsonb or to arrays; ``time`` to ns for bigint;
``duration`` to ``<m>mo<d>d<n>ns`` text; uuid/inet/decimal to text for text arrays.
Deletes are :class:`ExtraRow` values: the primary-key values in ``TableSpec.primary_key``
order and the version the target row had when the scan read it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.literals import ColumnType, Family, column_type, value_checker
from cdc_pipelines.postgres.repair.convert import Converter, column_converter, hashable
from cdc_pipelines.postgres.types import VERSION_COLUMN_PG_TYPE, column_pg_type
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.rows.layout import written_columns

FINGERPRINT_CHARS = 32
DEFAULT_BATCH_SIZE = 20_000  # rows per batch; its temp table stays within temp_buffers (8 MB)
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

Row = tuple[object, ...]


class BatchKind(StrEnum):
    INSERT = "insert"  # keys the re-read found absent: plain COPY, guarded upsert on a clash
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True)
class ExtraRow:
    """A target row to delete: its key (primary-key order) and its version at scan time."""

    key: tuple[object, ...]
    scan_version: int | None


@dataclass(frozen=True)
class RepairColumn:
    """One column the repair writes, with its PostgreSQL type."""

    name: str
    pg_type: ColumnType
    is_key: bool


@dataclass(frozen=True)
class RepairPlan:
    """Checked, converted repair work for one table; values are ready for COPY and literals."""

    table: TableSpec
    version_column: str
    run_id: str
    created_at: dt.datetime
    columns: tuple[RepairColumn, ...]
    inserts: tuple[Row, ...]
    upserts: tuple[Row, ...]
    deletes: tuple[Row, ...]
    digest: str

    @property
    def insert_count(self) -> int:
        """Rows whose key the target lacked when verified (written by COPY, see apply_repair)."""
        return len(self.inserts)

    @property
    def upsert_count(self) -> int:
        """Rows whose key the target held when verified (written by the guarded upsert)."""
        return len(self.upserts)

    @property
    def write_count(self) -> int:
        """Every row the plan writes from the source: inserts and upserts."""
        return len(self.inserts) + len(self.upserts)

    @property
    def is_empty(self) -> bool:
        return not (self.inserts or self.upserts or self.deletes)

    @property
    def delete_count(self) -> int:
        return len(self.deletes)

    @property
    def target_name(self) -> str:
        return self.table.target

    @property
    def key_columns(self) -> tuple[RepairColumn, ...]:
        """Key columns in primary-key order (the order of :class:`ExtraRow` keys)."""
        by_name = {c.name: c for c in self.columns}
        return tuple(by_name[name] for name in self.table.primary_key)

    @property
    def version(self) -> RepairColumn:
        return self.columns[-1]

    @property
    def data_columns(self) -> tuple[RepairColumn, ...]:
        """Non-key columns an update rewrites (the version excluded)."""
        return tuple(c for c in self.columns[:-1] if not c.is_key)


# --------------------------------------------------------------------------- run ids


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a valid run id (it names audit rows); else :class:`ReconcileError`."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ReconcileError(
            f"run id {run_id!r} must be 1-128 letters, digits, '.', '_', ':' or '-' "
            "(starting with a letter or digit)"
        )
    return run_id


def new_run_id(now: dt.datetime | None = None) -> str:
    """A fresh run id: UTC time plus a random suffix (``repair-20250101T120000Z-1a2b3c4d``)."""
    moment = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"repair-{moment}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- row failures


def _key_text(names: Sequence[str], values: Sequence[object]) -> str:
    return "(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, values, strict=False)) + ")"


def _row_failure(
    fail: Callable[[str, Sequence[object], Sequence[int]], ReconcileError],
    names: Sequence[str],
    converters: Sequence[Converter],
    row: Sequence[object],
    key_positions: Sequence[int],
) -> ReconcileError:
    """The precise error for a row that failed conversion (slow path: column by column)."""
    for position, (name, convert, value) in enumerate(zip(names, converters, row, strict=True)):
        try:
            converted = convert(value)
        except (ReconcileError, TypeError, ValueError, ArithmeticError) as exc:
            what = "version" if position == len(names) - 1 else f"column {name!r}"
            return fail(f"{what}: {exc}", row, key_positions)
        if converted is None and position in key_positions:
            return fail(
                f"key column {name!r} is NULL; a key must be complete (check the diff's key "
                "extraction)",
                row,
                key_positions,
            )
    version = row[-1]
    return fail(
        f"the version ({names[-1]}) is {version!r}; pass the source write time in µs (an int)",
        row,
        key_positions,
    )


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _RowConversion:
    """The columns a plan writes and how a driver row becomes a checked plan row."""

    table: TableSpec
    columns: tuple[RepairColumn, ...]  # the written columns, then the version
    converters: tuple[Converter, ...]  # one per column; the version's is last
    key_positions: tuple[int, ...]  # of the key columns in a row, in primary-key order
    needs_hashable: bool  # a key may hold lists or NaN: compare keys through hashable()

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def fail(self, what: str, values: Sequence[object], positions: Sequence[int]) -> ReconcileError:
        key = _key_text(self.table.primary_key, [values[p] for p in positions])
        return ReconcileError(f"table {self.table.target}, key {key}: {what}")


def _row_conversion(replicated: ReplicatedTable) -> _RowConversion:
    """The written columns with their PostgreSQL types and converters, the version last."""
    table, version_column = replicated.spec, replicated.version_column
    if any(c.name == version_column for c in table.columns):
        raise ReconcileError(
            f"table {table.target}: version column {version_column!r} is also a declared column; "
            "rename defaults.version_column"
        )
    schema = replicated.canonical
    keys = set(table.primary_key)
    columns: list[RepairColumn] = []
    converters: list[Converter] = []
    for spec in written_columns(table):
        ctype = column_type(column_pg_type(table, spec).sql)
        columns.append(RepairColumn(spec.name, ctype, spec.name in keys))
        converters.append(column_converter(spec, ctype, schema))
    version_type = column_type(VERSION_COLUMN_PG_TYPE)
    columns.append(RepairColumn(version_column, version_type, False))
    converters.append(value_checker(version_type))
    names = [c.name for c in columns]
    key_positions = tuple(names.index(n) for n in table.primary_key)
    # Keys that may hold lists or NaN need hashable(); plain scalar keys are hashed as they are.
    needs_hashable = any(
        columns[p].pg_type.is_array
        or columns[p].pg_type.family in (Family.REAL, Family.DOUBLE, Family.JSON)
        for p in key_positions
    )
    return _RowConversion(table, tuple(columns), tuple(converters), key_positions, needs_hashable)


def _by_columns(
    converters: Sequence[Converter],
    rows: list[Row],
    key_positions: Sequence[int],
    required: Sequence[int],
    needs_hashable: bool,
) -> tuple[list[Row], list[object]] | None:
    """``rows`` converted a column at a time, with their keys' identities; None when a row
    has the wrong width, a value fails, a ``required`` value is NULL or a key is listed
    twice (the row-by-row path then names the row)."""
    width = len(converters)
    if not rows or any(len(row) != width for row in rows):
        return None
    try:
        columns = [
            list(map(convert, values))
            for convert, values in zip(converters, zip(*rows, strict=True), strict=True)
        ]
    except (ReconcileError, TypeError, ValueError, ArithmeticError):
        return None
    if any(None in columns[p] for p in required):
        return None
    keys = zip(*(columns[p] for p in key_positions), strict=True)
    identities: list[object] = [hashable(k) for k in keys] if needs_hashable else list(keys)
    if len(set(identities)) != len(identities):
        return None
    return list(zip(*columns, strict=True)), identities


def _record(seen: dict[object, str], identities: list[object], kind: str) -> bool:
    """Record keys new to ``seen`` as ``kind``; False (nothing recorded) if one was there."""
    if not seen.keys().isdisjoint(identities):
        return False
    seen.update(dict.fromkeys(identities, kind))
    return True


def _convert_writes(
    conversion: _RowConversion,
    rows: Iterable[Sequence[object]],
    kind: BatchKind,
    seen: dict[object, str],
) -> list[Row]:
    """Insert or upsert rows, checked and converted; each key is recorded in ``seen``."""
    listed = [tuple(raw) for raw in rows]
    positions = conversion.key_positions
    required = (*positions, len(conversion.converters) - 1)
    fast = _by_columns(
        conversion.converters, listed, positions, required, conversion.needs_hashable
    )
    if fast is not None and _record(seen, fast[1], "upsert"):
        return fast[0]
    table, names = conversion.table, conversion.names
    converters, key_positions = conversion.converters, conversion.key_positions
    needs_hashable, fail = conversion.needs_hashable, conversion.fail
    width = len(converters)
    converted: list[Row] = []
    for row in listed:
        if len(row) != width:
            raise ReconcileError(
                f"table {table.target}: an {kind.value} row has {len(row)} values, expected "
                f"{width} in the order ({', '.join(names)}); see upsert_layout()"
            )
        try:
            out = tuple([convert(v) for convert, v in zip(converters, row, strict=True)])
        except (ReconcileError, TypeError, ValueError, ArithmeticError):
            raise _row_failure(fail, names, converters, row, key_positions) from None
        key = tuple([out[p] for p in key_positions])
        if None in key or out[-1] is None:
            raise _row_failure(fail, names, converters, row, key_positions)
        identity = hashable(key) if needs_hashable else key
        if identity in seen:
            raise fail(
                "listed twice among the inserts and upserts; deduplicate the discrepancies",
                row,
                key_positions,
            )
        seen[identity] = "upsert"
        converted.append(out)
    return converted


def _convert_deletes(
    conversion: _RowConversion, deletes: Iterable[ExtraRow], seen: dict[object, str]
) -> list[Row]:
    """Delete keys and scan versions, checked; a key also written or listed twice fails."""
    table, fail = conversion.table, conversion.fail
    key_columns = [conversion.columns[p] for p in conversion.key_positions]
    key_converters = [conversion.converters[p] for p in conversion.key_positions]
    version_check = conversion.converters[-1]
    all_positions = list(range(len(key_columns)))
    deletes = list(deletes)
    fast = _by_columns(
        (*key_converters, version_check),
        [(*extra.key, extra.scan_version) for extra in deletes],
        all_positions,
        all_positions,
        conversion.needs_hashable,
    )
    if fast is not None and _record(seen, fast[1], "delete"):
        return fast[0]
    converted: list[Row] = []
    for extra in deletes:
        key = tuple(extra.key)
        if len(key) != len(key_columns):
            raise ReconcileError(
                f"table {table.target}: a delete key has {len(key)} values, expected "
                f"{len(key_columns)} ({', '.join(table.primary_key)})"
            )
        checked: list[object] = []
        for column, convert, value in zip(key_columns, key_converters, key, strict=True):
            if value is None:
                raise fail(
                    f"key column {column.name!r} is NULL; a key must be complete",
                    key,
                    all_positions,
                )
            try:
                checked.append(convert(value))
            except (ReconcileError, TypeError, ValueError, ArithmeticError) as exc:
                raise fail(f"column {column.name!r}: {exc}", key, all_positions) from None
        try:
            checked.append(version_check(extra.scan_version))
        except ReconcileError as exc:
            raise fail(f"scan version: {exc}", key, all_positions) from None
        key_values = tuple(checked[:-1])
        identity = hashable(key_values) if conversion.needs_hashable else key_values
        if identity in seen:
            what = "listed twice among the deletes"
            if seen[identity] == "upsert":
                what = "both upserted and deleted"
            raise fail(f"{what}; the discrepancies contradict each other", key, all_positions)
        seen[identity] = "delete"
        converted.append(tuple(checked))
    return converted


def _digest(
    key_positions: Sequence[int],
    inserts: Sequence[Row],
    upserts: Sequence[Row],
    deletes: Sequence[Row],
) -> str:
    """The plan's fingerprint: every row's kind, key and version, in order."""
    digest = hashlib.sha256()
    delete_positions = range(len(key_positions))  # a delete row is its key, then the version
    for kind, rows, positions in (
        (BatchKind.INSERT, inserts, key_positions),
        (BatchKind.UPSERT, upserts, key_positions),
        (BatchKind.DELETE, deletes, delete_positions),
    ):
        if kind is BatchKind.INSERT and not rows:
            continue  # a plan without inserts keeps the digest it always had
        digest.update(kind.value.encode())
        for row in rows:
            digest.update(repr((*(row[p] for p in positions), row[-1])).encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def plan_repair(
    replicated: ReplicatedTable,
    upserts: Iterable[Sequence[object]],
    deletes: Iterable[ExtraRow] = (),
    *,
    inserts: Iterable[Sequence[object]] = (),
    run_id: str | None = None,
    now: dt.datetime | None = None,
) -> RepairPlan:
    """Check and convert one table's verified discrepancies into a :class:`RepairPlan`.

    ``upserts`` follow :func:`upsert_layout`; ``deletes`` are :class:`ExtraRow` values.
    ``inserts`` are rows in the same layout whose key the target lacked when verified:
    :func:`apply_repair` copies them straight into the table and falls back to the guarded
    upsert for a batch in which one of those keys has appeared since.
    Raises :class:`ReconcileError` (naming table, column and key) for a row of the wrong
    width, a NULL key value, a missing version, a value the column type cannot hold, a key
    listed twice, or a key both upserted and deleted.
    """
    created_at = now or dt.datetime.now(dt.UTC)
    run_id = check_run_id(run_id or new_run_id(created_at))
    conversion = _row_conversion(replicated)
    seen: dict[object, str] = {}  # key identity -> "upsert" or "delete"
    converted_inserts = _convert_writes(conversion, inserts, BatchKind.INSERT, seen)
    converted_upserts = _convert_writes(conversion, upserts, BatchKind.UPSERT, seen)
    converted_deletes = _convert_deletes(conversion, deletes, seen)
    return RepairPlan(
        table=conversion.table,
        version_column=replicated.version_column,
        run_id=run_id,
        created_at=created_at,
        columns=conversion.columns,
        inserts=tuple(converted_inserts),
        upserts=tuple(converted_upserts),
        deletes=tuple(converted_deletes),
        digest=_digest(
            conversion.key_positions, converted_inserts, converted_upserts, converted_deletes
        ),
    )


def checked_keys(replicated: ReplicatedTable, keys: Iterable[Sequence[object]]) -> list[Row]:
    """``keys`` checked and converted as :func:`plan_repair` converts a delete's key (each
    followed by a NULL version), for reading those keys from the target; a key listed twice
    fails."""
    conversion = _row_conversion(replicated)
    listed = [tuple(k) for k in keys]
    positions = range(len(conversion.key_positions))
    converters = [*(conversion.converters[p] for p in conversion.key_positions)]
    fast = _by_columns(converters, listed, positions, positions, conversion.needs_hashable)
    if fast is not None:
        return [(*key, None) for key in fast[0]]
    return _convert_deletes(conversion, (ExtraRow(key, None) for key in listed), {})
