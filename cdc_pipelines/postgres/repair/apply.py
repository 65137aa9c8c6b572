"""Applying a :class:`RepairPlan`: batch by batch, each batch one audited transaction.

Resumable (a batch already recorded for the run id is skipped), retried on lock conflicts,
optionally on several pooled connections at once.

Each batch is a binary COPY into a temp table (of rows encoded here, or beforehand by
:func:`~cdc_pipelines.postgres.repair.encode.encode_plan`), one ``INSERT … ON CONFLICT … WHERE
target.version <= excluded.version`` or guarded delete, and the audit rows. Rows whose keys
the re-read found absent skip the temp table: a binary COPY straight into the target, undone
by a savepoint (and the batch upserted instead) if one of those keys has appeared meanwhile.
A row whose version is newer than the repair's is never touched.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.audit import (
    AuditDetail,
    AuditTables,
    BatchAudit,
    RepairAction,
    ensure_audit_tables,
    key_arrays,
)
from cdc_pipelines.postgres.literals import register_copy_dumpers
from cdc_pipelines.postgres.repair.catalog import TargetTypes, read_target_types
from cdc_pipelines.postgres.repair.encode import EncodedPlan, EncodedRows
from cdc_pipelines.postgres.repair.plan import (
    DEFAULT_BATCH_SIZE,
    FINGERPRINT_CHARS,
    BatchKind,
    RepairColumn,
    RepairPlan,
    Row,
    check_run_id,
)
from cdc_pipelines.postgres.repair.sql_parts import (
    TARGET_ALIAS,
    col,
    column_list,
    delete_guard,
    key_match,
    target_table,
    upsert_tail,
)

DEFAULT_LOCK_TIMEOUT_MS = 30_000
DEFAULT_MAX_RETRIES = 3
RETRY_BACKOFF_S = 0.5
ROWS_TEMP_NAME = "cdc_repair_rows"
KEYS_TEMP_NAME = "cdc_repair_keys"
ROWS_TEMP = sql.Identifier("pg_temp", ROWS_TEMP_NAME)
KEYS_TEMP = sql.Identifier("pg_temp", KEYS_TEMP_NAME)
_RETRYABLE = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)

log = logging.getLogger(__name__)


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
class _Batch:
    number: int
    kind: BatchKind
    rows: tuple[Row, ...]  # empty when the batch is encoded
    fingerprint: str
    encoded: EncodedRows | None = None

    @property
    def size(self) -> int:
        return self.encoded.count if self.encoded is not None else len(self.rows)


def _parts(
    plan: RepairPlan | EncodedPlan, batch_size: int
) -> list[tuple[BatchKind, Sequence[tuple[Row, ...] | EncodedRows]]]:
    """Each kind's batches, as rows or encoded, inserts first, then upserts and deletes."""
    rows = plan.plan if isinstance(plan, EncodedPlan) else plan

    def split(part: tuple[Row, ...]) -> list[tuple[Row, ...]]:
        return [part[s : s + batch_size] for s in range(0, len(part), batch_size)]

    if not isinstance(plan, EncodedPlan):
        return [
            (BatchKind.INSERT, split(rows.inserts)),
            (BatchKind.UPSERT, split(rows.upserts)),
            (BatchKind.DELETE, split(rows.deletes)),
        ]
    if plan.batch_size != batch_size:
        raise ReconcileError(
            f"table {plan.target_name}: the plan was encoded in batches of "
            f"{plan.batch_size} rows, not {batch_size}; apply it with that batch_size"
        )
    return [
        (BatchKind.INSERT, plan.inserts),
        (BatchKind.UPSERT, plan.upserts),
        (BatchKind.DELETE, split(rows.deletes)),
    ]


def _batches(plan: RepairPlan | EncodedPlan, batch_size: int, first: int = 0) -> list[_Batch]:
    """Insert, upsert, then delete batches, numbered from ``first``; each fingerprinted by
    plan digest, size and place (an encoded plan's batches as its rows' plan's would be)."""
    digest = plan.plan.digest if isinstance(plan, EncodedPlan) else plan.digest
    batches: list[_Batch] = []
    for kind, parts in _parts(plan, batch_size):
        for part in parts:
            number = first + len(batches)
            place = f"{digest}/{kind.value}/{batch_size}/{number}"
            fingerprint = hashlib.sha256(place.encode()).hexdigest()[:FINGERPRINT_CHARS]
            if isinstance(part, EncodedRows):
                batches.append(_Batch(number, kind, (), fingerprint, part))
            else:
                batches.append(_Batch(number, kind, part, fingerprint))
    return batches


def batch_count(plan: RepairPlan | EncodedPlan, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """How many batches :func:`apply_repair` splits ``plan`` into."""
    return sum(len(parts) for _kind, parts in _parts(plan, batch_size))


def _key_arrays(alias: sql.Identifier, plan: RepairPlan) -> sql.Composable:
    return key_arrays(
        [col(alias, c.name) for c in plan.key_columns], [c.name for c in plan.key_columns]
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
            returning=sql.SQL(", ").join(col(TARGET_ALIAS, c.name) for c in keyed),
        ),
        sql.SQL(
            "left_alone AS (\n    SELECT {r_keyed}, {classify} AS action FROM {temp} AS {r}\n"
            "    WHERE NOT EXISTS (SELECT FROM done AS {d} WHERE {d_match})\n)"
        ).format(
            r_keyed=sql.SQL(", ").join(col(rows, c.name) for c in keyed),
            classify=classify,
            temp=temp,
            r=rows,
            d=done,
            d_match=key_match(done, rows, plan),
        ),
    ]
    if done_action in detail.recorded:
        source = sql.SQL("done AS {}").format(done)
        insert = audit.insert_action_sets(
            sql.Literal(done_action.value),
            _key_arrays(done, plan),
            col(done, plan.version.name),
            source,
        )
        parts.append(sql.SQL("audit_done AS (\n    {}\n)").format(insert))
    # Counted once: every other part compares against it.
    parts.append(sql.SQL("done_count AS (SELECT count(*) AS n FROM done)"))
    some_left = sql.SQL("(SELECT n FROM done_count) < {}").format(sql.Literal(batch_rows))
    if recorded:
        source = sql.SQL("left_alone AS {} WHERE {} IN ({}) AND {}").format(
            left,
            col(left, "action"),
            sql.SQL(", ").join(sql.Literal(a.value) for a in recorded),
            some_left,
        )
        insert = audit.insert_action_sets(
            col(left, "action"), _key_arrays(left, plan), col(left, plan.version.name), source
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
        target=target_table(plan),
        alias=TARGET_ALIAS,
        columns=column_list(plan.columns),
        temp=ROWS_TEMP,
        tail=upsert_tail(plan),
    )
    classify = sql.SQL(
        "CASE WHEN EXISTS (SELECT FROM {target} AS {cur} WHERE {match} AND {cur_v} = {r_v}) "
        "THEN {unchanged} ELSE {newer} END"
    ).format(
        target=target_table(plan),
        cur=cur,
        match=key_match(cur, rows, plan),
        cur_v=col(cur, plan.version.name),
        r_v=col(rows, plan.version.name),
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
        target=target_table(plan),
        alias=TARGET_ALIAS,
        temp=KEYS_TEMP,
        k=keys,
        match=key_match(TARGET_ALIAS, keys, plan),
        guard=delete_guard(plan, col(keys, plan.version.name)),
    )
    classify = sql.SQL(
        "CASE WHEN EXISTS (SELECT FROM {target} AS {cur} WHERE {match}) "
        "THEN {newer} ELSE {absent} END"
    ).format(
        target=target_table(plan),
        cur=cur,
        match=key_match(cur, rows, plan),
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
    types: TargetTypes
    total_batches: int
    lock_timeout_ms: int
    on_batch: BatchHook | None
    audit_detail: AuditDetail


def _copy_rows(
    cursor: psycopg.Cursor[Any],
    relation: sql.Identifier,
    columns: Sequence[RepairColumn],
    oids: Sequence[int],
    rows: Iterable[Sequence[object]] | bytes,
) -> None:
    """COPY ``rows`` into ``relation``: rows to encode, or binary COPY data encoded before."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        relation, column_list(columns)
    )
    with cursor.copy(statement) as copy:
        if isinstance(rows, bytes):
            copy.write(rows)
            return
        copy.set_types(list(oids))
        for row in rows:
            copy.write_row(row)


def _create_keys_temp(cursor: psycopg.Cursor[Any], plan: RepairPlan) -> tuple[RepairColumn, ...]:
    """The temp table of keys and versions (deletes, and the audit of inserts); its columns."""
    columns = (*plan.key_columns, plan.version)
    cursor.execute(
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
            sql.Identifier(KEYS_TEMP_NAME), column_list(columns), target_table(plan)
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
        statement = _delete_statement(plan, audit, settings.audit_detail, batch.size)
    else:
        temp, oids = ROWS_TEMP, settings.types.row_oids
        columns = plan.columns
        cursor.execute(
            sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                sql.Identifier(ROWS_TEMP_NAME), target_table(plan)
            )
        )
        statement = _upsert_statement(plan, audit, settings.audit_detail, batch.size)
    rows = batch.encoded.rows if batch.encoded is not None else batch.rows
    _copy_rows(cursor, temp, columns, oids, rows)
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
    ``catalog._CATALOG_COPY_BLOCKERS``), and after undoing a COPY that wrote fewer rows than sent.
    """
    plan = settings.plan
    if settings.types.copy_blockers:
        return None
    try:
        with conn.transaction():
            rows = batch.encoded.rows if batch.encoded is not None else batch.rows
            _copy_rows(cursor, target_table(plan), plan.columns, settings.types.row_oids, rows)
            if cursor.rowcount != batch.size:
                raise _NotAllCopied
    except (psycopg.errors.UniqueViolation, _NotAllCopied):
        return None
    if RepairAction.UPSERT in settings.audit_detail.recorded:
        columns = _create_keys_temp(cursor, plan)
        positions = [plan.columns.index(c) for c in columns]
        keys: Iterable[Sequence[object]] | bytes = (
            batch.encoded.keys
            if batch.encoded is not None
            else ([row[p] for p in positions] for row in batch.rows)
        )
        _copy_rows(cursor, KEYS_TEMP, columns, settings.types.key_oids, keys)
        written = sql.Identifier("w")
        cursor.execute(
            audit.insert_action_sets(
                sql.Literal(RepairAction.UPSERT.value),
                _key_arrays(written, plan),
                col(written, plan.version.name),
                sql.SQL("{} AS {}").format(KEYS_TEMP, written),
            )
        )
    return {RepairAction.UPSERT.value: batch.size}


def _apply_batch(
    conn: psycopg.Connection[Any], batch: _Batch, settings: _ApplySettings
) -> BatchReport:
    plan = settings.plan
    audit = BatchAudit(settings.audit_tables, settings.run_id, plan.target_name, batch.number)
    report = BatchReport(
        settings.run_id, batch.number, settings.total_batches, batch.kind, batch.size
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
                report = replace(report, copied=0 if counts is None else batch.size)
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
        f"{settings.total_batches} ({batch.kind.value}, {batch.size} rows, run "
        f"{settings.run_id!r}): {what}: {exc}. The batch was rolled back; earlier batches stay "
        "committed (audited under the run id). Fix the cause and repair again: a new run "
        "re-verifies and repairs what is left."
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
    to_apply: RepairPlan | EncodedPlan,
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

    ``to_apply`` may be a plan whose rows were encoded beforehand (:func:`encode_plan`, with
    the same ``batch_size``); it is refused if the target's column types changed since.
    """
    encoded = to_apply if isinstance(to_apply, EncodedPlan) else None
    plan = to_apply.plan if isinstance(to_apply, EncodedPlan) else to_apply
    run_id = check_run_id(run_id or plan.run_id)
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
    batches = _batches(to_apply, batch_size, first_batch)
    inserts = to_apply.insert_count

    def prepare(conn: psycopg.Connection[Any]) -> _ApplySettings:
        try:
            ensure_audit_tables(_idle(conn, plan), audit_tables)
            types = read_target_types(conn, plan)
        except psycopg.Error as exc:
            raise ServiceError(
                f"table {plan.target_name}: cannot prepare the repair: {exc}; check the connection"
            ) from exc
        if encoded is not None and (encoded.row_oids, encoded.row_types) != (
            types.row_oids,
            types.row_types,
        ):
            raise ReconcileError(
                f"table {plan.target_name}: its column types changed after the repair was "
                "planned; run the reconciliation again to plan it for the table as it is now"
            )
        if inserts and types.copy_blockers:
            log.info(
                "table %s has %s: its %d missing rows go through the guarded upsert, not COPY",
                plan.target_name,
                " and ".join(types.copy_blockers),
                inserts,
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
