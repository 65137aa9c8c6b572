"""The repair audit trail: which run changed which row, in which batch, and why.

``repair_batches`` holds one row per applied batch (the resume marker: a rerun with the same
run id skips batches recorded there); ``repair_actions`` one row per key a batch touched or
deliberately left alone. Both live in a configurable schema (``cdc_audit`` by default).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from cdc_pipelines.errors import ReconcileError, ServiceError

DEFAULT_AUDIT_SCHEMA = "cdc_audit"
ACTIONS_TABLE = "repair_actions"
BATCHES_TABLE = "repair_batches"


class RepairAction(StrEnum):
    """What repair did with one key."""

    UPSERT = "upsert"  # inserted, or updated an older/differing row
    DELETE = "delete"  # removed an extra row whose version had not advanced since the scan
    SKIP_NEWER = "skip_newer"  # the target row was newer than the repair (kept as is)
    SKIP_UNCHANGED = "skip_unchanged"  # the target already held exactly this row
    SKIP_ABSENT = "skip_absent"  # the extra row was already gone


class AuditDetail(StrEnum):
    """Which actions get one ``repair_actions`` row per key (every batch is counted either way)."""

    KEYS = "keys"  # every action, upserts included: the full trail
    EXCEPTIONS = "exceptions"  # deletes and keys left alone because newer or gone; upserts and
    # unchanged keys only counted in repair_batches (bulk repairs: about 1.5× faster)

    @property
    def recorded(self) -> frozenset[RepairAction]:
        if self is AuditDetail.KEYS:
            return frozenset(RepairAction)
        return frozenset({RepairAction.DELETE, RepairAction.SKIP_NEWER, RepairAction.SKIP_ABSENT})


@dataclass(frozen=True)
class AuditTables:
    """Where the audit trail lives."""

    schema: str = DEFAULT_AUDIT_SCHEMA

    @property
    def actions(self) -> sql.Identifier:
        return sql.Identifier(self.schema, ACTIONS_TABLE)

    @property
    def batches(self) -> sql.Identifier:
        return sql.Identifier(self.schema, BATCHES_TABLE)


@dataclass(frozen=True)
class AuditedAction:
    """One row of ``repair_actions``."""

    run_id: str
    target_table: str
    batch: int
    action: RepairAction
    key: dict[str, Any]
    version: int | None
    applied_at: dt.datetime


@dataclass(frozen=True)
class AuditedBatch:
    """One row of ``repair_batches``: a committed batch and its counts."""

    run_id: str
    target_table: str
    batch: int
    fingerprint: str
    upserted: int
    deleted: int
    skipped_newer: int
    skipped_unchanged: int
    skipped_absent: int
    completed_at: dt.datetime


COUNT_COLUMNS = {
    RepairAction.UPSERT.value: "upserted",
    RepairAction.DELETE.value: "deleted",
    RepairAction.SKIP_NEWER.value: "skipped_newer",
    RepairAction.SKIP_UNCHANGED.value: "skipped_unchanged",
    RepairAction.SKIP_ABSENT.value: "skipped_absent",
}
_ACTION_VALUES = sql.SQL(", ").join(sql.Literal(a.value) for a in RepairAction)

_CREATE = (
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}"),
    sql.SQL(
        """CREATE TABLE IF NOT EXISTS {batches} (
    run_id text NOT NULL,
    target_table text NOT NULL,
    batch integer NOT NULL,
    fingerprint text NOT NULL,
    upserted integer NOT NULL DEFAULT 0,
    deleted integer NOT NULL DEFAULT 0,
    skipped_newer integer NOT NULL DEFAULT 0,
    skipped_unchanged integer NOT NULL DEFAULT 0,
    skipped_absent integer NOT NULL DEFAULT 0,
    completed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, target_table, batch)
)"""
    ),
    sql.SQL(
        """CREATE TABLE IF NOT EXISTS {actions} (
    run_id text NOT NULL,
    target_table text NOT NULL,
    batch integer NOT NULL,
    action text NOT NULL CHECK (action IN ({action_values})),
    key jsonb NOT NULL,
    version bigint,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
    ),
    sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {actions} (run_id)"),
)


def ensure_audit_tables(conn: psycopg.Connection[Any], tables: AuditTables) -> None:
    """Create the audit schema and tables if missing (own transaction; idempotent)."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ReconcileError(
            "the connection has an open transaction; commit or roll it back before repair"
        )
    parts = {
        "schema": sql.Identifier(tables.schema),
        "batches": tables.batches,
        "actions": tables.actions,
        "action_values": _ACTION_VALUES,
        "index": sql.Identifier(f"{ACTIONS_TABLE}_run_id_idx"),
    }
    try:
        with conn.transaction():
            for statement in _CREATE:
                conn.execute(statement.format(**parts))
    except psycopg.errors.UniqueViolation:
        # Two first-time repairs raced on CREATE … IF NOT EXISTS; the other one created it.
        pass
    except psycopg.Error as exc:
        raise ServiceError(
            f"cannot create the repair audit tables in schema {tables.schema!r}: {exc}; grant "
            "CREATE on the database or create the schema beforehand"
        ) from None


@dataclass(frozen=True)
class BatchAudit:
    """The audit statements of one batch of one run (values as literals: see _run_filter)."""

    tables: AuditTables
    run_id: str
    target_table: str
    batch: int

    def _where(self) -> sql.Composed:
        return sql.SQL("{} AND batch = {}").format(
            _run_filter(self.run_id, self.target_table), sql.Literal(self.batch)
        )

    def claim(self, conn: psycopg.Connection[Any], fingerprint: str) -> bool:
        """Record the batch as this run's; False if it is recorded already (waits for a
        concurrent claim of the same batch to commit or roll back first)."""
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {batches} (run_id, target_table, batch, fingerprint) "
                "VALUES ({run}, {table}, {batch}, {fingerprint}) "
                "ON CONFLICT (run_id, target_table, batch) DO NOTHING RETURNING batch"
            ).format(
                batches=self.tables.batches,
                run=sql.Literal(self.run_id),
                table=sql.Literal(self.target_table),
                batch=sql.Literal(self.batch),
                fingerprint=sql.Literal(fingerprint),
            )
        ).fetchone()
        return row is not None

    def recorded_fingerprint(self, conn: psycopg.Connection[Any]) -> str | None:
        row = conn.execute(
            sql.SQL("SELECT fingerprint FROM {} WHERE {}").format(
                self.tables.batches, self._where()
            )
        ).fetchone()
        return None if row is None else str(row[0])

    def record_counts(self, conn: psycopg.Connection[Any], counts: Mapping[str, int]) -> None:
        """Store the batch's counts per action (keys are :class:`RepairAction` values)."""
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(counts.get(action, 0)))
            for action, column in COUNT_COLUMNS.items()
        )
        conn.execute(
            sql.SQL("UPDATE {} SET {}, completed_at = clock_timestamp() WHERE {}").format(
                self.tables.batches, assignments, self._where()
            )
        )

    def insert_actions(
        self,
        action: sql.Composable,
        key: sql.Composable,
        version: sql.Composable,
        source: sql.Composable,
    ) -> sql.Composed:
        """``INSERT … SELECT`` of one action row per row of ``source`` (for a WITH clause)."""
        return sql.SQL(
            "INSERT INTO {actions} (run_id, target_table, batch, action, key, version)\n"
            "    SELECT {run}, {table}, {batch}, {action}, {key}, {version} FROM {source}\n"
            "    RETURNING action"
        ).format(
            actions=self.tables.actions,
            run=sql.Literal(self.run_id),
            table=sql.Literal(self.target_table),
            batch=sql.Literal(self.batch),
            action=action,
            key=key,
            version=version,
            source=source,
        )


def _run_filter(run_id: str, target_table: str | None) -> sql.Composed:
    # Values as literals, not %s parameters: a configurable schema name may contain '%'.
    condition = sql.SQL("run_id = {}").format(sql.Literal(run_id))
    if target_table is None:
        return condition
    return sql.SQL("{} AND target_table = {}").format(condition, sql.Literal(target_table))


def _exists(conn: psycopg.Connection[Any], relation: sql.Identifier) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (relation.as_string(conn),)).fetchone()
    return row is not None and row[0] is not None


def read_run_actions(
    conn: psycopg.Connection[Any],
    run_id: str,
    *,
    tables: AuditTables | None = None,
    target_table: str | None = None,
) -> list[AuditedAction]:
    """Every action a run recorded (optionally for one target table), by batch."""
    tables = tables or AuditTables()
    query = sql.SQL(
        "SELECT run_id, target_table, batch, action, key, version, applied_at FROM {actions} "
        "WHERE {where} ORDER BY target_table, batch, action, key"
    ).format(actions=tables.actions, where=_run_filter(run_id, target_table))
    with conn.transaction():
        rows = conn.execute(query).fetchall() if _exists(conn, tables.actions) else []
    return [AuditedAction(r[0], r[1], r[2], RepairAction(r[3]), r[4], r[5], r[6]) for r in rows]


def read_run_batches(
    conn: psycopg.Connection[Any],
    run_id: str,
    *,
    tables: AuditTables | None = None,
    target_table: str | None = None,
) -> list[AuditedBatch]:
    """The committed batches of a run, in order."""
    tables = tables or AuditTables()
    query = sql.SQL(
        "SELECT run_id, target_table, batch, fingerprint, upserted, deleted, skipped_newer, "
        "skipped_unchanged, skipped_absent, completed_at FROM {batches} "
        "WHERE {where} ORDER BY target_table, batch"
    ).format(batches=tables.batches, where=_run_filter(run_id, target_table))
    with conn.transaction():
        rows = conn.execute(query).fetchall() if _exists(conn, tables.batches) else []
    return [AuditedBatch(*row) for row in rows]
