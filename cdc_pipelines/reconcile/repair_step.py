"""Step 4, repair: plan the verified discrepancies, write the dry-run script, apply on request.

The plan takes fresh source rows up and verified extras out; applying it never overwrites
a newer row (see ``postgres.repair``). :class:`Repairer` applies several plans under one
run id, numbering batches on from the last, so a table can be repaired slice by slice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from psycopg_pool import ConnectionPool

from cdc_pipelines.errors import CdcPipelinesError, ServiceError
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.repair import (
    BatchReport,
    EncodedPlan,
    ExtraRow,
    RepairOutcome,
    RepairPlan,
    apply_repair,
    batch_count,
    plan_repair,
)
from cdc_pipelines.reconcile.verify import VerificationResult
from cdc_pipelines.reconcile.verify_step import (
    Presence,
    postgres_connection,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import TokenRange
from cdc_pipelines.rows.keys import Key

DEFAULT_REPAIR_CONNECTIONS = 2
POOL_OPEN_TIMEOUT_S = 30.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepairSettings:
    """How repair batches are applied."""

    connections: int = DEFAULT_REPAIR_CONNECTIONS  # batches applied at once
    audit_detail: AuditDetail = AuditDetail.KEYS
    allow_unconfirmed: bool = False  # repair although the sink's catch-up was not confirmed


def plan_verified_repair(
    table: ReplicatedTable, verification: VerificationResult, run_id: str
) -> RepairPlan:
    """The repair of the confirmed discrepancies: fresh source rows up, verified extras out."""
    return plan_repair(
        table,
        verification.upsert_rows,
        verification.delete_rows,
        inserts=verification.insert_rows,
        run_id=run_id,
    )


class Repairer:
    """Applies one plan after another under one run id, batches numbered on from the last."""

    def __init__(self, dsn: str, run_id: str, repair: RepairSettings = RepairSettings()) -> None:
        self.dsn, self.run_id, self.repair = dsn, run_id, repair
        self.next_batch = 0
        self._committed: list[BatchReport] = []
        self._lock = threading.Lock()
        self._stack = ExitStack()
        self._target: psycopg.Connection[Any] | ConnectionPool[Any] | None = None

    def __enter__(self) -> Repairer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def apply(self, plan: RepairPlan | EncodedPlan) -> RepairOutcome:
        connections = max(1, self.repair.connections)
        target = self._target
        if target is None:
            if connections == 1:
                target = self._stack.enter_context(postgres_connection(self.dsn))
            else:
                try:
                    pool = ConnectionPool(
                        self.dsn, min_size=connections, max_size=connections, open=False
                    )
                    pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_S)
                except psycopg_pool.PoolTimeout as exc:
                    raise ServiceError(
                        f"cannot open {connections} PostgreSQL connections for the repair "
                        f"({exc}); check CDC_POSTGRES_DSN and that the server is up"
                    ) from None
                target = self._stack.enter_context(pool)
            self._target = target
        outcome = apply_repair(
            target,
            plan,
            self.run_id,
            audit_detail=self.repair.audit_detail,
            workers=connections,
            first_batch=self.next_batch,
            on_batch=self._record,
        )
        self.next_batch += batch_count(plan)
        return outcome

    def _record(self, batch: BatchReport) -> None:
        # Called from the batch's own thread just before it commits.
        if not batch.already_done:
            with self._lock:
                self._committed.append(batch)

    def totals(self) -> RepairOutcome:
        """What this repairer's batches did so far, also when a later batch failed."""
        with self._lock:
            done = list(self._committed)
        return RepairOutcome(
            run_id=self.run_id,
            upserted=sum(b.upserted for b in done),
            deleted=sum(b.deleted for b in done),
            skipped_newer=sum(b.skipped_newer for b in done),
            skipped_unchanged=sum(b.skipped_unchanged for b in done),
            skipped_absent=sum(b.skipped_absent for b in done),
            copied=sum(b.copied for b in done),
            batches_applied=len(done),
        )


@dataclass(frozen=True)
class VerifiedRepair:
    """What repairing one verification's discrepancies did."""

    outcome: RepairOutcome
    undone: int  # rows written for keys the source deleted meanwhile, removed again


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk's checked repair plan (its rows encoded when a worker planned it for the
    repair), and the source keys and versions it writes (so the keys the source deletes
    before the commit can be taken back)."""

    plan: RepairPlan | EncodedPlan
    written: tuple[tuple[Key, int], ...]
    span: TokenRange | None = None  # the tokens of every key it writes, when known


def written_keys(verification: VerificationResult) -> tuple[tuple[Key, int], ...]:
    """The keys and source versions the repair of ``verification`` writes."""
    return tuple((c.key, c.source.version) for c in verification.confirmed if c.source is not None)


def plan_chunk(
    table: ReplicatedTable,
    verification: VerificationResult,
    run_id: str,
    span: TokenRange | None = None,
) -> PlannedChunk:
    """Plan one chunk's repair (every value checked and converted here, before any write);
    ``span``: the token span the chunk's keys lie in, when it was verified by a scan."""
    plan = plan_verified_repair(table, verification, run_id)
    return PlannedChunk(plan, written_keys(verification), span)


def apply_planned(
    table: ReplicatedTable, chunk: PlannedChunk, repairer: Repairer, source_has: Presence
) -> VerifiedRepair | None:
    """Apply a planned chunk, then take back what the source deleted meanwhile
    (:func:`take_back`). None when there is nothing to repair."""
    if chunk.plan.is_empty:
        return None
    try:
        outcome = repairer.apply(chunk.plan)
    except BaseException:
        # Its batches commit one by one: what did commit is still checked, if possible.
        with contextlib.suppress(CdcPipelinesError):
            take_back(table, chunk.written, repairer, source_has)
        raise
    return VerifiedRepair(outcome, take_back(table, chunk.written, repairer, source_has))


def take_back(
    table: ReplicatedTable,
    written: Sequence[tuple[Key, int]],
    repairer: Repairer,
    source_has: Presence,
) -> int:
    """Delete again the written keys the source no longer has; how many rows were removed.

    Between the re-read and the commit, the source may delete a key and the sink apply that
    delete; repair would then bring the row back. So once the batches that wrote
    ``written`` (keys and the versions written) have committed, the keys are checked at the
    source once more, and those gone are deleted again under the version guard (only a row
    at most as new as the one repair wrote is removed). Call it after the commit of every
    batch it covers: a whole slice's chunks can be checked at once, by one scan.
    """
    keys = [key for key, _ in written]
    still = source_has(keys) if keys else []
    gone = [
        ExtraRow(key, version)
        for (key, version), present in zip(written, still, strict=True)
        if not present
    ]
    if not gone:
        return 0
    log.info(
        "table %s: %d repaired key(s) were deleted at the source meanwhile; removing them",
        table.target,
        len(gone),
    )
    return repairer.apply(plan_repair(table, [], gone, run_id=repairer.run_id)).deleted


def repair_verified(
    table: ReplicatedTable,
    verification: VerificationResult,
    repairer: Repairer,
    source_has: Presence,
) -> VerifiedRepair | None:
    """Plan and apply one verification's repair (see :func:`apply_planned`)."""
    return apply_planned(
        table, plan_chunk(table, verification, repairer.run_id), repairer, source_has
    )


def unconfirmed_reason(detail: str) -> str:
    """Why repair refuses to act on verdicts whose catch-up was not confirmed."""
    return (
        f"the sink's catch-up is unconfirmed ({detail}), so rows still in flight may be "
        "counted as discrepancies; nothing was repaired. Repair anyway with "
        "--repair-unconfirmed (CLI) or allow_unconfirmed: true (Dagster)"
    )
