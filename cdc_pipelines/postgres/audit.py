"""The repair audit trail: which run changed which row, in which batch, and why.

``repair_batches`` holds one row per applied batch (the resume marker: a rerun with the same
run id skips batches recorded there). ``repair_action_sets`` holds one row per batch and
action, with every key that action covered: the key columns as parallel JSON arrays
(``{"id": [1, 2], "region": ["eu", "us"]}``) and the versions as a ``bigint[]``. Writing one
set per batch instead of one row per key makes the per-key trail nearly free. The view
``repair_actions`` unrolls the sets into one row per key a batch touched or deliberately
left alone. All live in a configurable schema (``cdc_audit`` by default).
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
ACTIONS_VIEW = "repair_actions"
ACTION_SETS_TABLE = "repair_action_sets"
BATCHES_TABLE = "repair_batches"


class RepairAction(StrEnum):
    """What repair did with one key."""

    UPSERT = "upsert"  # inserted, or updated an older/differing row
    DELETE = "delete"  # removed an extra row whose version had not advanced since the scan
    SKIP_NEWER = "skip_newer"  # the target row was newer than the repair (kept as is)
    SKIP_UNCHANGED = "skip_unchanged"  # the target already held exactly this row
    SKIP_ABSENT = "skip_absent"  # the extra row was already gone


class AuditDetail(StrEnum):
    """Which actions have their keys recorded (every batch is counted either way)."""

    KEYS = "keys"  # every action, upserts included: the full trail
    EXCEPTIONS = "exceptions"  # deletes and keys left alone because newer or gone; upserts and
    # unchanged keys only counted in repair_batches

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
        """The per-key view over :attr:`action_sets`."""
        return sql.Identifier(self.schema, ACTIONS_VIEW)

    @property
    def action_sets(self) -> sql.Identifier:
        return sql.Identifier(self.schema, ACTION_SETS_TABLE)

    @property
    def batches(self) -> sql.Identifier:
        return sql.Identifier(self.schema, BATCHES_TABLE)


@dataclass(frozen=True)
class AuditedAction:
    """One row of the ``repair_actions`` view: one key of one action set."""

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
)
_CREATE_SETS = (
    sql.SQL(
        """CREATE TABLE {action_sets} (
    run_id text NOT NULL,
    target_table text NOT NULL,
    batch integer NOT NULL,
    action text NOT NULL CHECK (action IN ({action_values})),
    keys json NOT NULL,
    versions bigint[] NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
    ),
    # A batch's key set is a few hundred kB: stored out of line uncompressed, since pglz
    # compressing it cost about as much as building it.
    sql.SQL(
        "ALTER TABLE {action_sets} ALTER COLUMN keys SET STORAGE EXTERNAL, "
        "ALTER COLUMN versions SET STORAGE EXTERNAL"
    ),
)
_CREATE_INDEX = sql.SQL("CREATE INDEX IF NOT EXISTS {index} ON {action_sets} (run_id)")
# Each set's JSON is parsed once: every key column's array is unrolled with its ordinal,
# and the columns are gathered back into one key object per ordinal.
_CREATE_VIEW = sql.SQL(
    """CREATE VIEW {actions} AS
SELECT s.run_id, s.target_table, s.batch, s.action, u.key, s.versions[u.n::integer] AS version,
       s.applied_at
FROM {action_sets} AS s
CROSS JOIN LATERAL (
    SELECT e.n, jsonb_object_agg(k.key, e.value) AS key
    FROM json_each(s.keys) AS k
    CROSS JOIN LATERAL json_array_elements(k.value) WITH ORDINALITY AS e (value, n)
    GROUP BY e.n
) AS u"""
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
        "action_sets": tables.action_sets,
        "action_values": _ACTION_VALUES,
        "index": sql.Identifier(f"{ACTION_SETS_TABLE}_run_id_idx"),
    }
    try:
        with conn.transaction():
            for statement in _CREATE:
                conn.execute(statement.format(**parts))
            if _relation_kind(conn, tables.action_sets) is None:
                for statement in _CREATE_SETS:
                    conn.execute(statement.format(**parts))
            conn.execute(_CREATE_INDEX.format(**parts))
            kind = _relation_kind(conn, tables.actions)
            if kind is None:
                conn.execute(_CREATE_VIEW.format(**parts))
            elif kind != "v":
                raise ReconcileError(
                    f"{tables.schema}.{ACTIONS_VIEW} is a table (one row per key, from an "
                    f"earlier cdc-pipelines); keys are now recorded in {ACTION_SETS_TABLE} and "
                    f"{ACTIONS_VIEW} is a view over it. Rename the old table to keep its rows: "
                    f'ALTER TABLE "{tables.schema}".{ACTIONS_VIEW} RENAME TO {ACTIONS_VIEW}_v1'
                )
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
        # Two first-time repairs raced on creating them; the other one did.
        pass
    except psycopg.Error as exc:
        raise ServiceError(
            f"cannot create the repair audit tables in schema {tables.schema!r}: {exc}; grant "
            "CREATE on the database or create the schema beforehand"
        ) from None


def _relation_kind(conn: psycopg.Connection[Any], relation: sql.Identifier) -> str | None:
    row = conn.execute(
        "SELECT c.relkind FROM pg_class AS c WHERE c.oid = to_regclass(%s)",
        (relation.as_string(conn),),
    ).fetchone()
    return None if row is None else str(row[0])


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

    def insert_action_sets(
        self,
        action: sql.Composable,
        keys: sql.Composable,
        version: sql.Composable,
        source: sql.Composable,
    ) -> sql.Composed:
        """``INSERT … SELECT`` of one action set per action among the rows of ``source`` (for a
        WITH clause). ``keys`` aggregates the key columns (see :func:`key_arrays`); the
        versions are aggregated in the same row order. No rows, no set."""
        return sql.SQL(
            "INSERT INTO {sets} (run_id, target_table, batch, action, keys, versions)\n"
            "    SELECT {run}, {table}, {batch}, {action}, {keys}, array_agg({version})\n"
            "    FROM {source} GROUP BY 4\n"
            "    RETURNING action"
        ).format(
            sets=self.tables.action_sets,
            run=sql.Literal(self.run_id),
            table=sql.Literal(self.target_table),
            batch=sql.Literal(self.batch),
            action=action,
            keys=keys,
            version=version,
            source=source,
        )


def key_arrays(columns: list[sql.Composable], names: list[str]) -> sql.Composable:
    """``{"name": [values…], …}`` over the aggregated rows: one JSON array per key column.

    ``json`` rather than ``jsonb``: building it is only text output per value, which keeps
    the per-key trail cheap; the ``repair_actions`` view reads it back as ``jsonb``. One
    ``json_build_object`` suffices: a PostgreSQL primary key has at most 32 columns, and
    the function takes 100 arguments.
    """
    pairs = [
        sql.SQL("{}, json_agg({})").format(sql.Literal(name), column)
        for name, column in zip(names, columns, strict=True)
    ]
    return sql.SQL("json_build_object({})").format(sql.SQL(", ").join(pairs))


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
    """Every key action a run recorded (optionally for one target table), by batch."""
    tables = tables or AuditTables()
    query = sql.SQL(
        "SELECT run_id, target_table, batch, action, key, version, applied_at FROM {actions} "
        "WHERE {where} ORDER BY target_table, batch, action, key"
    ).format(actions=tables.actions, where=_run_filter(run_id, target_table))
    with conn.transaction():
        rows = conn.execute(query).fetchall() if _exists(conn, tables.action_sets) else []
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
