"""Bulk repair of one target table: version-guarded upserts and deletes in audited batches.

:func:`plan_repair` checks and converts the verified discrepancies once (a bad value fails
here, before anything is written); the plan renders a dry-run SQL script, and
:func:`apply_repair` writes it batch by batch, each batch one transaction: binary COPY into a
temp table, one ``INSERT … ON CONFLICT … WHERE target.version <= excluded.version``, guarded
deletes, and the audit rows. Rows whose keys the re-read found absent skip the temp table: a
binary COPY straight into the target, undone by a savepoint (and the batch upserted instead)
if one of those keys has appeared meanwhile. A row whose version is newer than the repair's
is never touched.

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
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from cdc_pipelines.config import ColumnSpec, TableSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.audit import (
    AuditDetail,
    AuditTables,
    BatchAudit,
    RepairAction,
    ensure_audit_tables,
    key_arrays,
)
from cdc_pipelines.postgres.literals import (
    ColumnType,
    Family,
    JsonText,
    column_type,
    register_copy_dumpers,
    render_literal,
    value_checker,
)
from cdc_pipelines.postgres.types import VERSION_COLUMN_PG_TYPE, column_pg_type
from cdc_pipelines.rows.canonical import (
    CanonicalSchema,
    dumps_canonical,
    json_element,
    time_nanos,
)
from cdc_pipelines.rows.connector_form import connector_value
from cdc_pipelines.rows.layout import written_columns

DEFAULT_BATCH_SIZE = 20_000  # rows per batch; its temp table stays within temp_buffers (8 MB)
SCRIPT_ROWS_PER_STATEMENT = 100
DEFAULT_LOCK_TIMEOUT_MS = 30_000
DEFAULT_MAX_RETRIES = 3
RETRY_BACKOFF_S = 0.5
FINGERPRINT_CHARS = 32
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ROWS_TEMP_NAME = "cdc_repair_rows"
KEYS_TEMP_NAME = "cdc_repair_keys"
ROWS_TEMP = sql.Identifier("pg_temp", ROWS_TEMP_NAME)
KEYS_TEMP = sql.Identifier("pg_temp", KEYS_TEMP_NAME)
TARGET_ALIAS = sql.Identifier("target")
TEXT_OID = 25
_RETRYABLE = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)

Row = tuple[object, ...]
log = logging.getLogger(__name__)


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
class BatchReport:
    """What one committed (or about to be committed) batch did."""

    run_id: str
    batch: int
    total_batches: int
    kind: BatchKind
    rows: int
    upserted: int = 0
    deleted: int = 0
    skipped_newer: int = 0
    skipped_unchanged: int = 0
    skipped_absent: int = 0
    copied: int = 0  # of ``upserted``: rows copied straight in (verified absent, no clash)
    already_done: bool = False


@dataclass(frozen=True)
class RepairOutcome:
    """The totals of one :func:`apply_repair` call (batches done by an earlier call not counted)."""

    run_id: str
    upserted: int
    deleted: int
    skipped_newer: int
    skipped_unchanged: int = 0
    skipped_absent: int = 0
    copied: int = 0  # of ``upserted``: rows copied straight in (verified absent, no clash)
    batches_applied: int = 0
    batches_already_done: int = 0

    @property
    def changed(self) -> int:
        return self.upserted + self.deleted


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

    def sql_script(self) -> str:
        """A psql-runnable script with the same guarded effect on the table as :func:`apply_repair`.

        Run it with ``psql -v ON_ERROR_STOP=1 -f plan.sql`` (it has its own BEGIN/COMMIT).
        It does not write the audit tables.
        """
        return _script(self)


# --------------------------------------------------------------------------- planning


def _check_run_id(run_id: str) -> str:
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


def _as_text(element: object) -> str:
    return element if isinstance(element, str) else dumps_canonical(element)


def _driver_scalar(
    cql: CqlType, ctype: ColumnType, schema: CanonicalSchema
) -> Callable[[object], object] | None:
    """How a driver value of ``cql`` becomes a value of ``ctype``'s family (None: as is)."""
    family = ctype.family
    if family is Family.JSON:
        return lambda v: JsonText(dumps_canonical(json_element(v, cql, schema)))
    if family is Family.TEXT and cql.name not in ("text", "ascii"):
        return lambda v: v if isinstance(v, str) else _as_text(json_element(v, cql, schema))
    if family is Family.INTEGER and cql.name == "time":
        return time_nanos
    return None


def _is_empty_collection(value: object, cql: CqlType) -> bool:
    """Cassandra stores an empty non-frozen collection as no value: NULL, on both sides."""
    if cql.frozen:
        return False
    if cql.name in ("list", "set", "map"):
        return len(value) == 0  # type: ignore[arg-type]
    if cql.name == "udt":
        items = value.values() if isinstance(value, Mapping) else tuple(value)  # type: ignore[arg-type]
        return all(item is None for item in items)
    return False


def _column_converter(
    column: ColumnSpec, ctype: ColumnType, schema: CanonicalSchema
) -> Callable[[object], object]:
    """Driver value → checked PostgreSQL value for one column (errors carry no context yet)."""
    cql = column.cql_type
    check = value_checker(ctype)
    if ctype.family is Family.JSON and not ctype.is_array:
        user_types = {name: {f: str(t) for f, t in fields} for name, fields in schema.user_types}

        def to_json(value: object) -> object:
            # The connector's JSON shape, so repaired rows look like streamed ones.
            if value is None or _is_empty_collection(value, cql):
                return None
            try:
                text = json.dumps(
                    connector_value(cql, value, user_types), ensure_ascii=False, allow_nan=False
                )
            except ValueError:  # json names it "Out of range float values"
                raise ValueError(
                    f"a NaN or infinite number inside this {cql} has no jsonb form; correct "
                    "the source row (a float column outside a collection can hold it)"
                ) from None
            return check(JsonText(text))

        return to_json
    if ctype.is_array:
        if cql.name not in ("list", "set"):
            raise ReconcileError(
                f"column {column.name!r} is {cql} but its target type {ctype.declared} is an "
                "array; declare a list/set column or change target_type"
            )
        element = _driver_scalar(cql.params[0], ctype.element, schema)
        if element is None:
            return check

        def to_array(value: object) -> object:
            if value is None or isinstance(value, str | bytes):
                return check(value)
            items = [None if v is None else element(v) for v in value]  # type: ignore[attr-defined]
            return check(items)

        return to_array
    scalar = _driver_scalar(cql, ctype, schema)
    if scalar is None:
        return check
    return lambda value: None if value is None else check(scalar(value))


def _hashable(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return ("NaN",)  # PostgreSQL treats NaN as equal to NaN; Python does not
    return value


def _key_text(names: Sequence[str], values: Sequence[object]) -> str:
    return "(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, values, strict=False)) + ")"


def _row_failure(
    fail: Callable[[str, Sequence[object], Sequence[int]], ReconcileError],
    names: Sequence[str],
    converters: Sequence[Callable[[object], object]],
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


def plan_repair(
    table: TableSpec,
    version_column: str,
    upserts: Iterable[Sequence[object]],
    deletes: Iterable[ExtraRow] = (),
    *,
    inserts: Iterable[Sequence[object]] = (),
    run_id: str | None = None,
    user_types: Mapping[str, Mapping[str, str]] | None = None,
    now: dt.datetime | None = None,
) -> RepairPlan:
    """Check and convert one table's verified discrepancies into a :class:`RepairPlan`.

    ``upserts`` follow :func:`upsert_layout`; ``deletes`` are :class:`ExtraRow` values.
    ``inserts`` are rows in the same layout whose key the target lacked when verified:
    :func:`apply_repair` copies them straight into the table and falls back to the guarded
    upsert for a batch in which one of those keys has appeared since.
    Raises :class:`ReconcileError` (naming table, column and key) for a row of the wrong
    width, a NULL key value, a missing version, a value the column type cannot hold, a key
    listed twice, or a key both upserted and deleted. ``user_types`` is
    ``PipelineConfig.user_types`` (needed for UDT columns).
    """
    created_at = now or dt.datetime.now(dt.UTC)
    run_id = _check_run_id(run_id or new_run_id(created_at))
    if any(c.name == version_column for c in table.columns):
        raise ReconcileError(
            f"table {table.target}: version column {version_column!r} is also a declared column; "
            "rename defaults.version_column"
        )
    schema = CanonicalSchema.from_table(table, version_column=version_column, user_types=user_types)
    keys = set(table.primary_key)
    columns: list[RepairColumn] = []
    converters: list[Callable[[object], object]] = []
    for spec in written_columns(table):
        ctype = column_type(column_pg_type(table, spec).sql)
        columns.append(RepairColumn(spec.name, ctype, spec.name in keys))
        converters.append(_column_converter(spec, ctype, schema))
    version_type = column_type(VERSION_COLUMN_PG_TYPE)
    columns.append(RepairColumn(version_column, version_type, False))
    version_check = value_checker(version_type)
    names = [c.name for c in columns]
    key_positions = [names.index(n) for n in table.primary_key]

    def fail(what: str, values: Sequence[object], positions: Sequence[int]) -> ReconcileError:
        key = _key_text(table.primary_key, [values[p] for p in positions])
        return ReconcileError(f"table {table.target}, key {key}: {what}")

    # Keys that may hold lists or NaN need _hashable; plain scalar keys are hashed as they are.
    needs_hashable = any(
        columns[p].pg_type.is_array
        or columns[p].pg_type.family in (Family.REAL, Family.DOUBLE, Family.JSON)
        for p in key_positions
    )
    seen: dict[object, str] = {}
    data_converters = (*converters, version_check)
    width = len(columns)

    def convert_rows(rows: Iterable[Sequence[object]], kind: BatchKind) -> list[Row]:
        converted: list[Row] = []
        for raw in rows:
            row = tuple(raw)
            if len(row) != width:
                raise ReconcileError(
                    f"table {table.target}: an {kind.value} row has {len(row)} values, expected "
                    f"{width} in the order ({', '.join(names)}); see upsert_layout()"
                )
            try:
                out = tuple([convert(v) for convert, v in zip(data_converters, row, strict=True)])
            except (ReconcileError, TypeError, ValueError, ArithmeticError):
                raise _row_failure(fail, names, data_converters, row, key_positions) from None
            key = tuple([out[p] for p in key_positions])
            if None in key or out[-1] is None:
                raise _row_failure(fail, names, data_converters, row, key_positions)
            identity = _hashable(key) if needs_hashable else key
            if identity in seen:
                raise fail(
                    "listed twice among the inserts and upserts; deduplicate the discrepancies",
                    row,
                    key_positions,
                )
            seen[identity] = "upsert"
            converted.append(out)
        return converted

    converted_inserts = convert_rows(inserts, BatchKind.INSERT)
    converted_upserts = convert_rows(upserts, BatchKind.UPSERT)

    key_columns = [columns[p] for p in key_positions]
    key_converters = [converters[p] for p in key_positions]
    converted_deletes: list[Row] = []
    all_positions = list(range(len(key_columns)))
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
        identity = _hashable(tuple(checked[:-1]))
        if identity in seen:
            what = "listed twice among the deletes"
            if seen[identity] == "upsert":
                what = "both upserted and deleted"
            raise fail(f"{what}; the discrepancies contradict each other", key, all_positions)
        seen[identity] = "delete"
        converted_deletes.append(tuple(checked))

    digest = hashlib.sha256()
    for kind, rows, positions in (
        (BatchKind.INSERT, converted_inserts, key_positions),
        (BatchKind.UPSERT, converted_upserts, key_positions),
        (BatchKind.DELETE, converted_deletes, all_positions),
    ):
        if kind is BatchKind.INSERT and not rows:
            continue  # a plan without inserts keeps the digest it always had
        digest.update(kind.value.encode())
        for row in rows:
            digest.update(repr((*(row[p] for p in positions), row[-1])).encode())
    return RepairPlan(
        table=table,
        version_column=version_column,
        run_id=run_id,
        created_at=created_at,
        columns=tuple(columns),
        inserts=tuple(converted_inserts),
        upserts=tuple(converted_upserts),
        deletes=tuple(converted_deletes),
        digest=digest.hexdigest()[:FINGERPRINT_CHARS],
    )


# --------------------------------------------------------------------------- shared SQL


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _col(alias: sql.Identifier | sql.SQL, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(alias, _ident(name))


def _comparable(alias: sql.Identifier | sql.SQL, column: RepairColumn) -> sql.Composable:
    # json has no equality operator; compare it as jsonb.
    if column.pg_type.family is Family.JSON and column.pg_type.base == "json":
        return sql.SQL("{}::jsonb").format(_col(alias, column.name))
    return _col(alias, column.name)


def _target(plan: RepairPlan) -> sql.Identifier:
    return sql.Identifier(plan.table.target_schema, plan.table.target_table)


def _names(columns: Iterable[RepairColumn]) -> sql.Composed:
    return sql.SQL(", ").join(_ident(c.name) for c in columns)


def _key_match(
    left: sql.Identifier | sql.SQL, right: sql.Identifier | sql.SQL, plan: RepairPlan
) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(_col(left, c.name), _col(right, c.name)) for c in plan.key_columns
    )


def _upsert_tail(plan: RepairPlan) -> sql.Composed:
    """``ON CONFLICT … DO UPDATE … WHERE <guard>``: the same text for apply and the script."""
    excluded = sql.SQL("EXCLUDED")
    version = plan.version.name
    updated = (*plan.data_columns, plan.version)
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(_ident(c.name), _col(excluded, c.name)) for c in updated
    )
    target_version = _col(TARGET_ALIAS, version)
    new_version = _col(excluded, version)
    guard = [
        sql.SQL("{} IS NULL").format(target_version),
        sql.SQL("{} < {}").format(target_version, new_version),
    ]
    if plan.data_columns:
        guard.append(
            sql.SQL("({} = {} AND ROW({}) IS DISTINCT FROM ROW({}))").format(
                target_version,
                new_version,
                sql.SQL(", ").join(_comparable(TARGET_ALIAS, c) for c in plan.data_columns),
                sql.SQL(", ").join(_comparable(excluded, c) for c in plan.data_columns),
            )
        )
    return sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET {sets}\nWHERE {guard}").format(
        keys=_names(plan.key_columns), sets=sets, guard=sql.SQL(" OR ").join(guard)
    )


def _delete_guard(plan: RepairPlan, scan_version: sql.Composable) -> sql.Composed:
    target_version = _col(TARGET_ALIAS, plan.version.name)
    return sql.SQL("({tv} IS NULL OR {tv} <= {scan})").format(tv=target_version, scan=scan_version)


# --------------------------------------------------------------------------- dry-run script


def _comment(text: str) -> str:
    """Text safe inside a ``--`` comment: no line breaks or other control characters."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _script(plan: RepairPlan) -> str:
    target = _target(plan)
    header = [
        "-- cdc_pipelines repair plan (dry run). Review it, then run it with:",
        "--   psql -v ON_ERROR_STOP=1 -f <this file>",
        f"-- table:     {_comment(plan.table.source)} -> {_comment(target.as_string(None))}",
        f"-- run id:    {plan.run_id}",
        f"-- generated: {plan.created_at.astimezone(dt.UTC).isoformat(timespec='seconds')}",
        f"-- upserts:   {plan.write_count} ({plan.insert_count} absent from the target when "
        f"verified; a target row with a newer {_comment(plan.version.name)} is kept)",
        f"-- deletes:   {plan.delete_count} (a row whose version advanced since the scan is kept)",
        "-- The audit tables are written by apply_repair only, not by this script.",
        "SET client_encoding = 'UTF8';",
        "SET standard_conforming_strings = on;",
        "BEGIN;",
    ]
    parts = ["\n".join(header)]
    columns = plan.columns
    head = sql.SQL("INSERT INTO {} AS {} ({}) VALUES").format(target, TARGET_ALIAS, _names(columns))
    head_text = head.as_string(None)
    tail_text = _upsert_tail(plan).as_string(None)
    # The script may run long after the plan: every row goes through the guarded upsert.
    written = (*plan.inserts, *plan.upserts)
    for start in range(0, len(written), SCRIPT_ROWS_PER_STATEMENT):
        chunk = written[start : start + SCRIPT_ROWS_PER_STATEMENT]
        values = ",\n".join(
            "  ("
            + ", ".join(render_literal(v, c.pg_type) for v, c in zip(row, columns, strict=True))
            + ")"
            for row in chunk
        )
        parts.append(f"{head_text}\n{values}\n{tail_text};")
    key_columns = plan.key_columns
    for row in plan.deletes:
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(
                _col(TARGET_ALIAS, c.name), sql.SQL(render_literal(v, c.pg_type))
            )
            for c, v in zip(key_columns, row[:-1], strict=True)
        )
        scan = sql.SQL(render_literal(row[-1], plan.version.pg_type))
        statement = sql.SQL("DELETE FROM {} AS {} WHERE {} AND {};").format(
            target, TARGET_ALIAS, match, _delete_guard(plan, scan)
        )
        parts.append(statement.as_string(None))
    parts.append("COMMIT;\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------- applying


@dataclass(frozen=True)
class _TargetTypes:
    """Type OIDs for COPY, read from the live table and checked against the plan, and why
    verified-absent rows may not be COPYed straight in (empty: they may)."""

    row_oids: tuple[int, ...]
    key_oids: tuple[int, ...]
    copy_blockers: tuple[str, ...] = ()


_CATALOG_COLUMNS = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       c.oid
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped
"""
_CATALOG_UNIQUE_KEYS = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_catalog.pg_index AS i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indimmediate
  AND i.indisvalid AND i.indisready
GROUP BY i.indexrelid
"""
# What makes COPY differ from INSERT on the table or any of its partitions: COPY refuses
# row-level security and ignores rules; a user trigger may skip or rewrite rows, which
# only the guarded path's RETURNING would see.
_CATALOG_COPY_BLOCKERS = """
WITH tree AS (  -- pg_partition_tree is empty for a table that is not partitioned
    SELECT %(oid)s::oid AS relid
    UNION SELECT relid FROM pg_catalog.pg_partition_tree(%(oid)s::oid)
)
SELECT bool_or(c.relrowsecurity),
       bool_or(c.relhasrules),
       EXISTS (SELECT FROM pg_catalog.pg_trigger AS g JOIN tree AS t ON g.tgrelid = t.relid
               WHERE NOT g.tgisinternal AND g.tgenabled <> 'D')
FROM tree JOIN pg_catalog.pg_class AS c ON c.oid = tree.relid
"""
_COPY_BLOCKER_NAMES = ("row-level security", "rewrite rules", "user triggers")


def _read_target_types(conn: psycopg.Connection[Any], plan: RepairPlan) -> _TargetTypes:
    name = plan.target_name
    with conn.transaction():
        rows = conn.execute(
            _CATALOG_COLUMNS, (plan.table.target_schema, plan.table.target_table)
        ).fetchall()
        if not rows:
            raise ReconcileError(
                f"target table {name} does not exist; create it first (cdc-pipelines ddl apply)"
            )
        unique_keys = conn.execute(_CATALOG_UNIQUE_KEYS, (rows[0][3],)).fetchall()
        blocked = conn.execute(_CATALOG_COPY_BLOCKERS, {"oid": rows[0][3]}).fetchone() or ()
    live = {r[0]: (int(r[1]), str(r[2])) for r in rows}
    missing = [c.name for c in plan.columns if c.name not in live]
    if missing:
        raise ReconcileError(
            f"target table {name} lacks columns {missing}; apply the DDL plan "
            "(cdc-pipelines ddl apply) before repairing"
        )
    if not any(set(k[0]) == set(plan.table.primary_key) for k in unique_keys):
        raise ReconcileError(
            f"target table {name} has no valid primary key or unique index on "
            f"({', '.join(plan.table.primary_key)}); add it, repair upserts need it (an index "
            "left invalid by a failed CREATE INDEX CONCURRENTLY does not count: REINDEX it)"
        )
    oids: dict[str, int] = {}
    for column in plan.columns:
        oid, live_type = live[column.name]
        try:
            actual = column_type(live_type)
        except ReconcileError as exc:
            raise ReconcileError(f"target table {name}, column {column.name!r}: {exc}") from None
        declared = column.pg_type
        if (actual.family, actual.is_array) != (declared.family, declared.is_array) or (
            actual.family is Family.INTEGER and actual.base != declared.base
        ):
            raise ReconcileError(
                f"target table {name}, column {column.name!r} is {live_type} but the declaration "
                f"maps it to {declared.declared}; apply the DDL or fix the column's target_type"
            )
        # Text, varchar and char share the binary format; psycopg dumps char only as text.
        oids[column.name] = (
            TEXT_OID if actual.family is Family.TEXT and not actual.is_array else oid
        )
    return _TargetTypes(
        row_oids=tuple(oids[c.name] for c in plan.columns),
        key_oids=(*(oids[c.name] for c in plan.key_columns), oids[plan.version.name]),
        copy_blockers=tuple(n for n, on in zip(_COPY_BLOCKER_NAMES, blocked, strict=True) if on),
    )


@dataclass(frozen=True)
class _Batch:
    number: int
    kind: BatchKind
    rows: tuple[Row, ...]
    fingerprint: str


def _batches(plan: RepairPlan, batch_size: int, first: int = 0) -> list[_Batch]:
    """Insert, upsert, then delete batches, numbered from ``first``; each fingerprinted by
    plan digest, size and place."""
    batches: list[_Batch] = []
    for kind, rows in (
        (BatchKind.INSERT, plan.inserts),
        (BatchKind.UPSERT, plan.upserts),
        (BatchKind.DELETE, plan.deletes),
    ):
        for start in range(0, len(rows), batch_size):
            number = first + len(batches)
            place = f"{plan.digest}/{kind.value}/{batch_size}/{number}"
            fingerprint = hashlib.sha256(place.encode()).hexdigest()[:FINGERPRINT_CHARS]
            batches.append(_Batch(number, kind, rows[start : start + batch_size], fingerprint))
    return batches


def batch_count(plan: RepairPlan, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """How many batches :func:`apply_repair` splits ``plan`` into."""
    return sum(
        -(-count // batch_size)
        for count in (len(plan.inserts), len(plan.upserts), len(plan.deletes))
    )


def _key_arrays(alias: sql.Identifier, plan: RepairPlan) -> sql.Composable:
    return key_arrays(
        [_col(alias, c.name) for c in plan.key_columns], [c.name for c in plan.key_columns]
    )


def _batch_statement(
    plan: RepairPlan,
    audit: BatchAudit,
    detail: AuditDetail,
    change: sql.Composable,
    done_action: RepairAction,
    temp: sql.Identifier,
    classify: sql.Composable,
    batch_rows: int,
) -> sql.Composed:
    """One statement per batch: the guarded change, the audit rows, and the count per action.

    ``change`` is an INSERT or DELETE returning the keys and version of the rows it changed;
    every other temp row is "left alone" and ``classify`` names why. Every part of a WITH
    statement sees the same snapshot, so ``cur`` in ``classify`` is the table as it was
    before the change (see :func:`_upsert_statement`). When every row was changed (the
    common case) the one-time filter ``some_left`` keeps the left-alone anti-join from running.
    """
    done, left, rows = sql.Identifier("d"), sql.Identifier("l"), sql.Identifier("r")
    keyed = (*plan.key_columns, plan.version)
    recorded = [a for a in RepairAction if a in detail.recorded and a is not done_action]
    parts: list[sql.Composable] = [
        sql.SQL("WITH done AS (\n    {change}\n    RETURNING {returning}\n)").format(
            change=change,
            returning=sql.SQL(", ").join(_col(TARGET_ALIAS, c.name) for c in keyed),
        ),
        sql.SQL(
            "left_alone AS (\n    SELECT {r_keyed}, {classify} AS action FROM {temp} AS {r}\n"
            "    WHERE NOT EXISTS (SELECT FROM done AS {d} WHERE {d_match})\n)"
        ).format(
            r_keyed=sql.SQL(", ").join(_col(rows, c.name) for c in keyed),
            classify=classify,
            temp=temp,
            r=rows,
            d=done,
            d_match=_key_match(done, rows, plan),
        ),
    ]
    if done_action in detail.recorded:
        source = sql.SQL("done AS {}").format(done)
        insert = audit.insert_action_sets(
            sql.Literal(done_action.value),
            _key_arrays(done, plan),
            _col(done, plan.version.name),
            source,
        )
        parts.append(sql.SQL("audit_done AS (\n    {}\n)").format(insert))
    # Counted once: every other part compares against it.
    parts.append(sql.SQL("done_count AS (SELECT count(*) AS n FROM done)"))
    some_left = sql.SQL("(SELECT n FROM done_count) < {}").format(sql.Literal(batch_rows))
    if recorded:
        source = sql.SQL("left_alone AS {} WHERE {} IN ({}) AND {}").format(
            left,
            _col(left, "action"),
            sql.SQL(", ").join(sql.Literal(a.value) for a in recorded),
            some_left,
        )
        insert = audit.insert_action_sets(
            _col(left, "action"), _key_arrays(left, plan), _col(left, plan.version.name), source
        )
        parts.append(sql.SQL("audit_left AS (\n    {}\n)").format(insert))
    # Data-modifying WITH parts run whether or not the final SELECT reads them.
    count = sql.SQL(
        "SELECT {done_action}, n FROM done_count\n"
        "UNION ALL SELECT action, count(*) FROM left_alone WHERE {some_left} GROUP BY action"
    ).format(done_action=sql.Literal(done_action.value), some_left=some_left)
    return sql.SQL("{}\n{}").format(sql.SQL(",\n").join(parts), count)


def _upsert_statement(
    plan: RepairPlan, audit: BatchAudit, detail: AuditDetail, batch_rows: int
) -> sql.Composed:
    """Guarded upsert of the temp rows; a row left alone was unchanged or lost to a newer one.

    A left-alone row whose version equals the snapshot's was already identical; any other
    lost to a newer version (possibly committed by a concurrent writer meanwhile).
    """
    cur, rows = sql.Identifier("cur"), sql.Identifier("r")
    change = sql.SQL(
        "INSERT INTO {target} AS {alias} ({columns})\n    SELECT {columns} FROM {temp}\n    {tail}"
    ).format(
        target=_target(plan),
        alias=TARGET_ALIAS,
        columns=_names(plan.columns),
        temp=ROWS_TEMP,
        tail=_upsert_tail(plan),
    )
    classify = sql.SQL(
        "CASE WHEN EXISTS (SELECT FROM {target} AS {cur} WHERE {match} AND {cur_v} = {r_v}) "
        "THEN {unchanged} ELSE {newer} END"
    ).format(
        target=_target(plan),
        cur=cur,
        match=_key_match(cur, rows, plan),
        cur_v=_col(cur, plan.version.name),
        r_v=_col(rows, plan.version.name),
        unchanged=sql.Literal(RepairAction.SKIP_UNCHANGED.value),
        newer=sql.Literal(RepairAction.SKIP_NEWER.value),
    )
    return _batch_statement(
        plan, audit, detail, change, RepairAction.UPSERT, ROWS_TEMP, classify, batch_rows
    )


def _delete_statement(
    plan: RepairPlan, audit: BatchAudit, detail: AuditDetail, batch_rows: int
) -> sql.Composed:
    """Guarded delete of the temp keys; a key left alone was newer or already gone."""
    cur, keys, rows = sql.Identifier("cur"), sql.Identifier("k"), sql.Identifier("r")
    change = sql.SQL(
        "DELETE FROM {target} AS {alias} USING {temp} AS {k}\n    WHERE {match} AND {guard}"
    ).format(
        target=_target(plan),
        alias=TARGET_ALIAS,
        temp=KEYS_TEMP,
        k=keys,
        match=_key_match(TARGET_ALIAS, keys, plan),
        guard=_delete_guard(plan, _col(keys, plan.version.name)),
    )
    classify = sql.SQL(
        "CASE WHEN EXISTS (SELECT FROM {target} AS {cur} WHERE {match}) "
        "THEN {newer} ELSE {absent} END"
    ).format(
        target=_target(plan),
        cur=cur,
        match=_key_match(cur, rows, plan),
        newer=sql.Literal(RepairAction.SKIP_NEWER.value),
        absent=sql.Literal(RepairAction.SKIP_ABSENT.value),
    )
    return _batch_statement(
        plan, audit, detail, change, RepairAction.DELETE, KEYS_TEMP, classify, batch_rows
    )


BatchHook = Callable[[BatchReport], None]


@dataclass(frozen=True)
class _ApplySettings:
    plan: RepairPlan
    run_id: str
    audit_tables: AuditTables
    types: _TargetTypes
    total_batches: int
    lock_timeout_ms: int
    on_batch: BatchHook | None
    audit_detail: AuditDetail


def _copy_rows(
    cursor: psycopg.Cursor[Any],
    relation: sql.Identifier,
    columns: Sequence[RepairColumn],
    oids: Sequence[int],
    rows: Iterable[Sequence[object]],
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(relation, _names(columns))
    with cursor.copy(statement) as copy:
        copy.set_types(list(oids))
        for row in rows:
            copy.write_row(row)


def _create_keys_temp(cursor: psycopg.Cursor[Any], plan: RepairPlan) -> tuple[RepairColumn, ...]:
    """The temp table of keys and versions (deletes, and the audit of inserts); its columns."""
    columns = (*plan.key_columns, plan.version)
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            sql.Identifier(KEYS_TEMP_NAME), _names(columns), _target(plan)
        )
    )
    return columns


def _guarded_change(
    cursor: psycopg.Cursor[Any], batch: _Batch, settings: _ApplySettings, audit: BatchAudit
) -> dict[str, int]:
    """The batch through a temp table: the guarded upsert, or the guarded delete."""
    plan = settings.plan
    if batch.kind is BatchKind.DELETE:
        temp, oids = KEYS_TEMP, settings.types.key_oids
        columns = _create_keys_temp(cursor, plan)
        statement = _delete_statement(plan, audit, settings.audit_detail, len(batch.rows))
    else:
        temp, oids = ROWS_TEMP, settings.types.row_oids
        columns = plan.columns
        cursor.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                sql.Identifier(ROWS_TEMP_NAME), _target(plan)
            )
        )
        statement = _upsert_statement(plan, audit, settings.audit_detail, len(batch.rows))
    _copy_rows(cursor, temp, columns, oids, batch.rows)
    return {str(action): int(n) for action, n in cursor.execute(statement).fetchall()}


class _NotAllCopied(Exception):
    """Undoes a straight COPY that PostgreSQL reports as writing fewer rows than were sent."""


def _insert_absent(
    conn: psycopg.Connection[Any],
    cursor: psycopg.Cursor[Any],
    batch: _Batch,
    settings: _ApplySettings,
    audit: BatchAudit,
) -> dict[str, int] | None:
    """COPY rows whose keys the re-read found absent straight into the target table.

    Race-safe without ``ON CONFLICT``: COPY only adds rows, so nothing newer is overwritten,
    and the primary key refuses a key that a concurrent writer committed since the re-read
    (COPY waits for one still committing). Then the savepoint undoes the COPY and None tells
    the caller to apply the batch through the guarded upsert instead. None as well, without
    trying, when the table has something COPY treats differently from INSERT (see
    ``_CATALOG_COPY_BLOCKERS``), and after undoing a COPY that wrote fewer rows than sent.
    """
    plan = settings.plan
    if settings.types.copy_blockers:
        return None
    try:
        with conn.transaction():
            _copy_rows(cursor, _target(plan), plan.columns, settings.types.row_oids, batch.rows)
            if cursor.rowcount != len(batch.rows):
                raise _NotAllCopied
    except (psycopg.errors.UniqueViolation, _NotAllCopied):
        return None
    if RepairAction.UPSERT in settings.audit_detail.recorded:
        columns = _create_keys_temp(cursor, plan)
        positions = [plan.columns.index(c) for c in columns]
        keys = ([row[p] for p in positions] for row in batch.rows)
        _copy_rows(cursor, KEYS_TEMP, columns, settings.types.key_oids, keys)
        written = sql.Identifier("w")
        cursor.execute(
            audit.insert_action_sets(
                sql.Literal(RepairAction.UPSERT.value),
                _key_arrays(written, plan),
                _col(written, plan.version.name),
                sql.SQL("{} AS {}").format(KEYS_TEMP, written),
            )
        )
    return {RepairAction.UPSERT.value: len(batch.rows)}


def _apply_batch(
    conn: psycopg.Connection[Any], batch: _Batch, settings: _ApplySettings
) -> BatchReport:
    plan = settings.plan
    audit = BatchAudit(settings.audit_tables, settings.run_id, plan.target_name, batch.number)
    report = BatchReport(
        settings.run_id, batch.number, settings.total_batches, batch.kind, len(batch.rows)
    )
    with conn.transaction():
        # Read committed: the ON CONFLICT guard and the DELETE's version check are evaluated
        # on the newest committed row, so a concurrent writer's newer version always wins.
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        # JIT compiling the batch statement costs more than it saves at these row counts.
        conn.execute("SET LOCAL jit = off")
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true)", (f"{settings.lock_timeout_ms}ms",)
        )
        if not audit.claim(conn, batch.fingerprint):
            if audit.recorded_fingerprint(conn) != batch.fingerprint:
                raise ReconcileError(
                    f"table {plan.target_name}: run {settings.run_id!r} already applied batch "
                    f"{batch.number} with different rows (the plan or batch_size changed); "
                    "apply this plan under a new run id"
                )
            return replace(report, already_done=True)
        with conn.cursor() as cursor:
            register_copy_dumpers(cursor.adapters)
            counts = None
            if batch.kind is BatchKind.INSERT:
                counts = _insert_absent(conn, cursor, batch, settings, audit)
                report = replace(report, copied=0 if counts is None else len(batch.rows))
            if counts is None:
                counts = _guarded_change(cursor, batch, settings, audit)
        audit.record_counts(conn, counts)
        report = replace(
            report,
            upserted=counts.get(RepairAction.UPSERT.value, 0),
            deleted=counts.get(RepairAction.DELETE.value, 0),
            skipped_newer=counts.get(RepairAction.SKIP_NEWER.value, 0),
            skipped_unchanged=counts.get(RepairAction.SKIP_UNCHANGED.value, 0),
            skipped_absent=counts.get(RepairAction.SKIP_ABSENT.value, 0),
        )
        if settings.on_batch is not None:
            # Inside the transaction: a hook that raises rolls this batch back (crash tests).
            settings.on_batch(report)
    return report


def _failure(settings: _ApplySettings, batch: _Batch, exc: Exception, what: str) -> str:
    return (
        f"repair of table {settings.plan.target_name} failed in batch {batch.number} of "
        f"{settings.total_batches} ({batch.kind.value}, {len(batch.rows)} rows, run "
        f"{settings.run_id!r}): {what}: {exc}. The batch was rolled back; earlier batches stay "
        f"committed. Fix the cause and rerun apply_repair with run id {settings.run_id!r} to resume."
    )


def _apply_batch_retrying(
    conn: psycopg.Connection[Any], batch: _Batch, settings: _ApplySettings, max_retries: int
) -> BatchReport:
    attempt = 0
    while True:
        try:
            return _apply_batch(conn, batch, settings)
        except _RETRYABLE as exc:
            if attempt >= max_retries:
                raise ReconcileError(
                    _failure(
                        settings, batch, exc, f"still conflicting after {attempt + 1} attempts"
                    )
                ) from exc
            attempt += 1
            time.sleep(RETRY_BACKOFF_S * attempt)
        except psycopg.OperationalError as exc:
            raise ServiceError(
                _failure(settings, batch, exc, "PostgreSQL connection problem")
            ) from exc
        except psycopg.Error as exc:
            raise ReconcileError(_failure(settings, batch, exc, "PostgreSQL refused it")) from exc


def _idle(conn: psycopg.Connection[Any], plan: RepairPlan) -> psycopg.Connection[Any]:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ReconcileError(
            f"table {plan.target_name}: the connection has an open transaction; commit or roll "
            "it back before apply_repair (each batch must commit on its own)"
        )
    return conn


def _run_in_parallel(
    pool: ConnectionPool[Any],
    batches: Sequence[_Batch],
    settings: _ApplySettings,
    workers: int,
    max_retries: int,
) -> list[BatchReport]:
    """Batches on ``workers`` pooled connections: one encodes COPY rows while another's
    statement runs. After a failure no new batch starts; the lowest failed batch is raised."""
    pending = iter(batches)
    lock = threading.Lock()
    stop = threading.Event()
    reports: list[BatchReport] = []
    failures: list[tuple[int, BaseException]] = []

    def work() -> None:
        with pool.connection() as conn:
            _idle(conn, settings.plan)
            while not stop.is_set():
                with lock:
                    batch = next(pending, None)
                if batch is None:
                    return
                try:
                    report = _apply_batch_retrying(conn, batch, settings, max_retries)
                except BaseException as exc:  # re-raised in the caller's thread
                    with lock:
                        failures.append((batch.number, exc))
                    stop.set()
                    return
                with lock:
                    reports.append(report)

    threads = [threading.Thread(target=work, name=f"repair-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise min(failures, key=lambda f: f[0])[1]
    return sorted(reports, key=lambda r: r.batch)


def apply_repair(
    conn_or_pool: psycopg.Connection[Any] | ConnectionPool[Any],
    plan: RepairPlan,
    run_id: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    audit: AuditTables | None = None,
    audit_detail: AuditDetail = AuditDetail.KEYS,
    workers: int = 1,
    on_batch: BatchHook | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    max_retries: int = DEFAULT_MAX_RETRIES,
    first_batch: int = 0,
) -> RepairOutcome:
    """Apply a plan in batches of ``batch_size`` rows, each batch one audited transaction.

    Insert batches come first, then upsert and delete batches, numbered from ``first_batch`` (several
    plans can share one run id when each starts after the last one's batches; see
    :func:`batch_count`). A batch already recorded
    for ``run_id`` (default: the plan's) is skipped, so rerunning after a crash resumes; the
    rerun must use the same plan and ``batch_size``. ``workers`` > 1 (a pool is needed) applies
    that many batches at once on separate connections; batches hold disjoint keys, so they
    cannot conflict, but they may commit out of order. ``on_batch`` is called inside each
    batch's transaction just before it commits (from the worker's thread). Deadlocks and lock
    timeouts are retried ``max_retries`` times. Raises :class:`ReconcileError` naming the
    table and batch when a batch fails (that batch is rolled back completely; batches already
    committed stay), :class:`ServiceError` on connection loss.
    """
    run_id = _check_run_id(run_id or plan.run_id)
    if batch_size < 1:
        raise ReconcileError(f"batch_size must be at least 1, got {batch_size}")
    if workers < 1 or (workers > 1 and not isinstance(conn_or_pool, ConnectionPool)):
        raise ReconcileError(
            f"table {plan.target_name}: workers={workers}; use 1, or pass a ConnectionPool "
            "with at least that many connections for parallel batches"
        )
    audit_tables = audit or AuditTables()
    if first_batch < 0:
        raise ReconcileError(f"first_batch must be at least 0, got {first_batch}")
    batches = _batches(plan, batch_size, first_batch)

    def prepare(conn: psycopg.Connection[Any]) -> _ApplySettings:
        try:
            ensure_audit_tables(_idle(conn, plan), audit_tables)
            types = _read_target_types(conn, plan)
        except psycopg.Error as exc:
            raise ServiceError(
                f"table {plan.target_name}: cannot prepare the repair: {exc}; check the connection"
            ) from exc
        if plan.inserts and types.copy_blockers:
            log.info(
                "table %s has %s: its %d missing rows go through the guarded upsert, not COPY",
                plan.target_name,
                " and ".join(types.copy_blockers),
                plan.insert_count,
            )
        return _ApplySettings(
            plan=plan,
            run_id=run_id,
            audit_tables=audit_tables,
            types=types,
            total_batches=first_batch + len(batches),
            lock_timeout_ms=lock_timeout_ms,
            on_batch=on_batch,
            audit_detail=audit_detail,
        )

    if isinstance(conn_or_pool, ConnectionPool):
        with conn_or_pool.connection() as conn:
            settings = prepare(conn)
            if workers == 1:
                reports = [_apply_batch_retrying(conn, b, settings, max_retries) for b in batches]
        if workers > 1:
            reports = _run_in_parallel(conn_or_pool, batches, settings, workers, max_retries)
    else:
        settings = prepare(conn_or_pool)
        reports = [_apply_batch_retrying(conn_or_pool, b, settings, max_retries) for b in batches]
    applied = [r for r in reports if not r.already_done]
    return RepairOutcome(
        run_id=run_id,
        upserted=sum(r.upserted for r in applied),
        deleted=sum(r.deleted for r in applied),
        skipped_newer=sum(r.skipped_newer for r in applied),
        skipped_unchanged=sum(r.skipped_unchanged for r in applied),
        skipped_absent=sum(r.skipped_absent for r in applied),
        copied=sum(r.copied for r in applied),
        batches_applied=len(applied),
        batches_already_done=len(reports) - len(applied),
    )
