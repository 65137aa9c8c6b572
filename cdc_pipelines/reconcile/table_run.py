"""The CLI's whole-table reconciliation: the four steps composed, slices diffed in worker processes.

index → diff every slice → verify, record and plan slice by slice → repair slice by slice.
Every slice is planned before any is repaired, so a row that cannot be written stops the
run with nothing changed; memory follows one slice's candidates, not the table's drift.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from cdc_pipelines.connect.secrets import with_mask_salt
from cdc_pipelines.errors import CdcPipelinesError, ReconcileError
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.repair import new_run_id, render_script
from cdc_pipelines.reconcile.diff_step import SliceOutcome, diff_table_slice
from cdc_pipelines.reconcile.index_step import ScanMarker, build_index
from cdc_pipelines.reconcile.repair_step import (
    Repairer,
    RepairSettings,
    plan_verified_repair,
    repair_verified,
    unconfirmed_reason,
)
from cdc_pipelines.reconcile.report import ConfirmedWriter, ReconcileReport, Tally
from cdc_pipelines.reconcile.scratch import DEFAULT_SCRATCH_DIR, ScratchLayout, read_candidates
from cdc_pipelines.reconcile.verify_step import (
    DEFAULT_SETTLE_SECONDS,
    DEFAULT_VERIFY_TIMEOUT_S,
    NOTHING_VERIFIED,
    CandidateVerifier,
    CatchUpWait,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_ids
from cdc_pipelines.settings import ConnectionSettings

DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class ReconcileOptions:
    """How to run one table's reconciliation from the CLI."""

    scratch: Path = DEFAULT_SCRATCH_DIR
    repair: bool = False
    workers: int = DEFAULT_WORKERS  # slice processes, and connections applying repair batches
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    verify_timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S
    audit_detail: AuditDetail = AuditDetail.KEYS
    repair_unconfirmed: bool = False  # repair although the sink's catch-up was not confirmed

    @property
    def wait(self) -> CatchUpWait:
        return CatchUpWait(self.settle_seconds, self.verify_timeout_s)

    @property
    def repair_settings(self) -> RepairSettings:
        return RepairSettings(max(1, self.workers), self.audit_detail, self.repair_unconfirmed)


class Progress(Protocol):
    """What the run reports while it goes (see ``reconcile.progress.SliceProgress``)."""

    def phase(self, text: str) -> None: ...
    def add_rows(self, count: int) -> None: ...
    def slice_done(self, slice_id: str, discrepancies: int, rows: int) -> None: ...


class _Silent:
    def phase(self, text: str) -> None:
        return None

    def add_rows(self, count: int) -> None:
        return None

    def slice_done(self, slice_id: str, discrepancies: int, rows: int) -> None:
        return None


def diff_all_slices(
    table: ReplicatedTable,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    workers: int,
    progress: Progress,
) -> list[SliceOutcome]:
    """Diff every slice, ``workers`` processes at a time (the CQL driver is CPU-bound)."""
    ids = slice_ids(table.slices)
    outcomes: list[SliceOutcome] = []

    def done(outcome: SliceOutcome) -> None:
        outcomes.append(outcome)
        progress.add_rows(outcome.source_rows)
        progress.slice_done(outcome.slice_id, outcome.candidates, outcome.source_rows)

    if workers <= 1:
        for slice_id in ids:
            done(diff_table_slice(table, slice_id, settings, layout))
        return outcomes
    # Workers come from a fork server, not from this process: a forked child would start
    # with the target-index pass's resident memory and add its slice on top. The resolved
    # table is pickled to them whole, so a worker never looks the table up again.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([diff_table_slice.__module__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(diff_table_slice, table, slice_id, settings, layout) for slice_id in ids
        ]
        for future in as_completed(futures):
            done(future.result())
    return sorted(outcomes, key=lambda o: o.slice_id)


def run_reconciliation(
    table: ReplicatedTable,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Index the target, diff every slice, verify the candidates, report, and repair on request.

    With ``options.workers`` > 1 slices are diffed in processes started from a fork server,
    which imports the caller's main module: a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    progress = progress or _Silent()
    started = time.monotonic()
    table = with_mask_salt(table)  # once, before the slice workers get the table
    layout = ScratchLayout(options.scratch, table.source)
    progress.phase(f"{table.target}: building the target index")
    build_index(table, settings, layout)
    scan = ScanMarker.read(layout)
    progress.phase(f"{table.source}: diffing {table.slices} token slices")
    outcomes = diff_all_slices(table, settings, layout, options.workers, progress)
    report = ReconcileReport(table=table.source)
    for outcome in outcomes:
        report.source_rows += outcome.source_rows
        report.target_rows += outcome.target_rows
        report.slices.append(asdict(outcome))
    progress.phase(f"{table.source}: verifying {sum(o.candidates for o in outcomes)} candidate(s)")
    run_id = new_run_id()
    report.run_id = run_id
    parquet, script = layout.discrepancies(run_id), layout.repair_script(run_id)
    candidate_files = [Path(o.candidates_path) for o in outcomes if o.candidates]
    with (
        CandidateVerifier(table, settings, scan, options.wait) as verifier,
        ConfirmedWriter(parquet) as confirmed,
        script.open("w", encoding="utf-8") as sql_out,
    ):
        planned = False
        for path in candidate_files:
            verification = verifier.verify([read_candidates(path)])
            report.add_verdicts(Tally.of(verification))
            confirmed.write(verification)
            plan = plan_verified_repair(table, verification, run_id)
            if not plan.is_empty:
                sql_out.write(render_script(plan))
                planned = True
        if not planned:
            sql_out.write(render_script(plan_verified_repair(table, NOTHING_VERIFIED, run_id)))
        report.verification = verifier.detail
        report.catch_up_confirmed = verifier.confirmed
        report.discrepancies_path = str(parquet)
        report.dry_run_sql_path = str(script)
        settled = 0
        if options.repair and planned and not (verifier.confirmed or options.repair_unconfirmed):
            report.repair_refused = unconfirmed_reason(verifier.detail)
        elif options.repair and planned:
            progress.phase(f"{table.target}: repairing {report.confirmed} discrepancies")
            try:
                settled = _repair_by_slice(
                    table, options, verifier, run_id, report, candidate_files, settings
                )
            except CdcPipelinesError as exc:
                report.duration_s = round(time.monotonic() - started, 3)
                raise RepairInterrupted(exc, report, layout.partial_report(run_id)) from exc
    report.remaining = max(0, report.confirmed - settled) + report.target_ahead
    report.duration_s = round(time.monotonic() - started, 3)
    return report


class RepairInterrupted(ReconcileError):
    """A repair that failed part-way; what it committed is in its partial report."""

    def __init__(self, cause: CdcPipelinesError, report: ReconcileReport, path: Path) -> None:
        report.repair_failed = str(cause)
        path.write_text(report.to_json() + "\n")
        super().__init__(
            f"{cause}\nRepair of {report.table} stopped; what run {report.run_id} committed "
            f"is in {path} and the audit tables. Repair what is left with: "
            f"cdc-pipelines reconcile {report.table} --repair"
        )
        self.exit_code = cause.exit_code
        self.report = report
        self.path = path


def _repair_by_slice(
    table: ReplicatedTable,
    options: ReconcileOptions,
    verifier: CandidateVerifier,
    run_id: str,
    report: ReconcileReport,
    candidate_files: list[Path],
    settings: ConnectionSettings,
) -> int:
    """Re-verify and repair each slice's candidates (fresh reads: time has passed since the
    dry run); returns how many confirmed discrepancies were settled. The report holds what
    was committed even when a batch fails."""
    with Repairer(settings.postgres_dsn, run_id, options.repair_settings) as repairer:
        try:
            for path in candidate_files:
                verification = verifier.verify([read_candidates(path)])
                done = repair_verified(table, verification, repairer, verifier.read_source)
                if done is not None:
                    report.undone_after_source_delete += done.undone
        finally:
            settled = report.add_repair(repairer.totals())
    # Rows taken back after a source delete were counted as deleted, not as settled twice.
    return settled - report.undone_after_source_delete
