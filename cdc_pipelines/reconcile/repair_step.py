"""Step 4, repair: plan the verified discrepancies, write the dry-run script, apply on request.

The plan takes fresh source rows up and verified extras out; applying it never overwrites
a newer row (see ``postgres.repair``). :class:`Repairer` applies several plans under one
run id, numbering batches on from the last, so a table can be repaired slice by slice.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.repair import (
    RepairOutcome,
    RepairPlan,
    apply_repair,
    batch_count,
    new_run_id,
    plan_repair,
    render_script,
)
from cdc_pipelines.reconcile.scratch import ScratchLayout
from cdc_pipelines.reconcile.verify import VerificationResult
from cdc_pipelines.reconcile.verify_step import verify_slice
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.settings import ConnectionSettings

DEFAULT_REPAIR_CONNECTIONS = 2


@dataclass(frozen=True)
class RepairSettings:
    """How repair batches are applied."""

    connections: int = DEFAULT_REPAIR_CONNECTIONS  # batches applied at once
    audit_detail: AuditDetail = AuditDetail.KEYS


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
        self._stack = ExitStack()
        self._target: psycopg.Connection[Any] | ConnectionPool[Any] | None = None

    def __enter__(self) -> Repairer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def apply(self, plan: RepairPlan) -> RepairOutcome:
        connections = max(1, self.repair.connections)
        target = self._target
        if target is None:
            if connections == 1:
                target = self._stack.enter_context(psycopg.connect(self.dsn))
            else:
                target = self._stack.enter_context(
                    ConnectionPool(self.dsn, min_size=connections, max_size=connections, open=True)
                )
            self._target = target
        outcome = apply_repair(
            target,
            plan,
            self.run_id,
            audit_detail=self.repair.audit_detail,
            workers=connections,
            first_batch=self.next_batch,
        )
        self.next_batch += batch_count(plan)
        return outcome


@dataclass(frozen=True)
class SliceRepair:
    """The verified repair of one slice: its plan, the dry-run script and, if applied, the outcome."""

    verification: VerificationResult
    plan: RepairPlan
    sql_path: Path
    outcome: RepairOutcome | None


def repair_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    apply: bool,
    repair: RepairSettings = RepairSettings(),
) -> SliceRepair:
    """Verify the slice's candidates again, plan the repair, write its SQL; apply on request."""
    verification = verify_slice(table, slice_id, settings, layout)
    run_id = new_run_id()
    plan = plan_verified_repair(table, verification, run_id)
    sql_path = layout.slice_repair_script(slice_id, run_id)
    sql_path.write_text(render_script(plan))
    outcome = None
    if apply and not plan.is_empty:
        with Repairer(settings.postgres_dsn, run_id, repair) as repairer:
            outcome = repairer.apply(plan)
    return SliceRepair(verification, plan, sql_path, outcome)
