"""A repair plan's written rows encoded for binary COPY before the apply.

After planning, turning rows into COPY data is the largest per-row cost left, and on the
CLI's path it would run in the one process that applies every slice. :func:`encode_plan`
does it where the rows were planned (the slice worker, in parallel), so the apply only
streams bytes; the encoded plan is also far cheaper to hand over between processes than
rows of ``Decimal`` and ``datetime`` objects. Deletes stay rows: they are keys only.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg.copy import Copy, FileWriter

from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.literals import register_copy_dumpers
from cdc_pipelines.postgres.repair.catalog import read_target_types
from cdc_pipelines.postgres.repair.plan import DEFAULT_BATCH_SIZE, RepairPlan, Row

# What psycopg's dumpers raise for a value its column's type cannot take (out of range,
# not encodable in the database's encoding, the wrong Python type).
ENCODE_FAILURES = (psycopg.Error, ValueError, TypeError, OverflowError, struct.error)


@dataclass(frozen=True)
class EncodedRows:
    """One batch of written rows as binary COPY data (signature and trailer included)."""

    count: int
    rows: bytes  # every planned column, in ``RepairPlan.columns`` order
    keys: bytes  # the key columns in primary-key order, then the version (for the audit)


@dataclass(frozen=True)
class EncodedPlan:
    """A plan whose inserts and upserts are encoded in batches of ``batch_size`` rows.

    ``plan`` keeps the columns, the deletes and the digest of every row (so batches are
    fingerprinted as the rows' own plan's would be); its inserts and upserts are dropped.
    ``row_oids`` and ``row_types`` are the target's column types the rows were encoded for
    (type OIDs, and the types as PostgreSQL writes them, modifiers included): an apply
    against a table whose types changed since is refused.
    """

    plan: RepairPlan
    row_oids: tuple[int, ...]
    row_types: tuple[str, ...]
    inserts: tuple[EncodedRows, ...]
    upserts: tuple[EncodedRows, ...]
    batch_size: int

    @property
    def target_name(self) -> str:
        return self.plan.target_name

    @property
    def insert_count(self) -> int:
        return sum(b.count for b in self.inserts)

    @property
    def upsert_count(self) -> int:
        return sum(b.count for b in self.upserts)

    @property
    def write_count(self) -> int:
        return self.insert_count + self.upsert_count

    @property
    def delete_count(self) -> int:
        return self.plan.delete_count

    @property
    def is_empty(self) -> bool:
        return not (self.inserts or self.upserts or self.plan.deletes)


def _copy_data(
    cursor: psycopg.Cursor[Any], oids: Sequence[int], rows: Iterable[Sequence[object]]
) -> bytes:
    """``rows`` as a whole binary COPY stream, formatted as psycopg would send them."""
    buffer = io.BytesIO()
    with Copy(cursor, binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(list(oids))
        for row in rows:
            copy.write_row(row)
    return buffer.getvalue()


def encode_plan(
    conn: psycopg.Connection[Any], plan: RepairPlan, batch_size: int = DEFAULT_BATCH_SIZE
) -> EncodedPlan:
    """``plan`` with its inserts and upserts encoded for the live target table (whose
    columns and types are checked first, as the apply checks them)."""
    try:
        types = read_target_types(conn, plan)
    except psycopg.Error as exc:
        raise ServiceError(
            f"table {plan.target_name}: cannot read its column types to encode the repair: "
            f"{exc}; check the connection to PostgreSQL"
        ) from exc
    positions = [plan.columns.index(c) for c in (*plan.key_columns, plan.version)]

    def encode(rows: Sequence[Row]) -> tuple[EncodedRows, ...]:
        batches = []
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            keys = ([row[p] for p in positions] for row in part)
            batches.append(
                EncodedRows(
                    len(part),
                    _copy_data(cursor, types.row_oids, part),
                    _copy_data(cursor, types.key_oids, keys),
                )
            )
        return tuple(batches)

    with conn.cursor() as cursor:
        register_copy_dumpers(cursor.adapters)
        try:
            inserts, upserts = encode(plan.inserts), encode(plan.upserts)
        except ENCODE_FAILURES as exc:  # a value its column's type cannot take
            raise ReconcileError(
                f"table {plan.target_name}: {_failing_value(cursor, plan, types.row_oids)} "
                f"cannot be written to its column ({type(exc).__name__}: {exc}); fix the "
                "value at the source, or the column's type in the target and the declaration"
            ) from exc
    return EncodedPlan(
        replace(plan, inserts=(), upserts=()),
        types.row_oids,
        types.row_types,
        inserts,
        upserts,
        batch_size,
    )


def _failing_value(cursor: psycopg.Cursor[Any], plan: RepairPlan, oids: Sequence[int]) -> str:
    """Which row (by key) and column hold the first value that cannot be encoded."""
    keys = [plan.columns.index(c) for c in plan.key_columns]
    for row in (*plan.inserts, *plan.upserts):
        for column, oid, value in zip(plan.columns, oids, row, strict=True):
            try:
                _copy_data(cursor, [oid], [[value]])
            except ENCODE_FAILURES:
                key = tuple(row[p] for p in keys)
                return f"the value of column {column.name!r} in the row with key {key!r}"
    return "a repair row"  # only the whole row fails: not expected, but still named
