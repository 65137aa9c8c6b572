"""The CLI's whole-table reconciliation: the four steps composed, slices diffed in worker processes.

index → diff every slice → verify, record and plan slice by slice → repair slice by slice.
Every slice is planned before any is repaired, so a row that cannot be written stops the
run with nothing changed; memory follows one slice's candidates, not the table's drift.
"""

from __future__ import annotations

import multiprocessing
import shutil
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
    unconfirmed_reason,
)
from cdc_pipelines.reconcile.report import ConfirmedWriter, ReconcileReport
from cdc_pipelines.reconcile.scratch import (
    DEFAULT_SCRATCH_DIR,
    ScratchLayout,
    owner_only,
)
from cdc_pipelines.reconcile.slice_repair import (
    SliceJob,
    SlicePlanned,
    apply_slice,
    verify_and_plan_slice,
)
from cdc_pipelines.reconcile.verify_step import (
    DEFAULT_SETTLE_SECONDS,
    DEFAULT_VERIFY_TIMEOUT_S,
    NOTHING_VERIFIED,
    CandidateVerifier,
    CatchUpWait,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_by_id, slice_ids
from cdc_pipelines.settings import ConnectionSettings

DEFAULT_WORKERS = 2
# Imported once by the fork server, before the first pool (diff or verify) starts it: the
# later pool's workers then start with their module loaded too.
WORKER_MODULES = [diff_table_slice.__module__, verify_and_plan_slice.__module__]


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
    context.set_forkserver_preload(WORKER_MODULES)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(diff_table_slice, table, slice_id, settings, layout) for slice_id in ids
        ]
        for future in as_completed(futures):
            done(future.result())
    return sorted(outcomes, key=lambda o: o.slice_id)


@owner_only
def run_reconciliation(
    table: ReplicatedTable,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    progress: Progress | None = None,
) -> ReconcileReport:
    """Index the target, diff every slice, verify the candidates, report, and repair on request.

    Candidates are verified and planned a chunk at a time, and with ``options.repair`` the
    checked plans are applied once every chunk is planned (ADR 0010); a batch that fails
    stops the run with a partial report of what was committed.

    With ``options.workers`` > 1 slices are diffed, verified and planned in processes
    started from a fork server,
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
    loading = sum(o.whole and not o.diff_in_scan for o in outcomes)
    drifted = sum(o.diff_in_scan for o in outcomes)
    loads = f"loading {loading} slice(s) whose target lacks most rows, " if loading else ""
    if drifted:
        loads += f"diffing {drifted} slice(s) with much drift in one scan each, "
    progress.phase(
        f"{table.source}: {loads}verifying {sum(o.candidates for o in outcomes)} candidate(s)"
    )
    report.run_id = new_run_id()
    report.discrepancies_path = str(layout.discrepancies(report.run_id))
    with CandidateVerifier(table, settings, scan, options.wait) as verifier:
        if any(o.to_verify for o in outcomes):
            verifier.wait_for_sink()
        repairing = options.repair and (verifier.confirmed or options.repair_unconfirmed)
        if repairing:
            progress.phase(f"{table.target}: verifying and repairing slice by slice")
        try:
            settled = _verify_and_act(table, settings, options, verifier, report, layout, outcomes)
        except CdcPipelinesError as exc:
            if not repairing:
                raise
            report.duration_s = round(time.monotonic() - started, 3)
            raise RepairInterrupted(exc, report, layout.partial_report(report.run_id)) from exc
        if options.repair and not repairing and report.confirmed:
            report.repair_refused = unconfirmed_reason(verifier.detail)
        report.verification = verifier.detail
        report.catch_up_confirmed = verifier.confirmed
    report.remaining = max(0, report.confirmed - settled) + report.target_ahead
    report.duration_s = round(time.monotonic() - started, 3)
    return report


def _verify_and_act(
    table: ReplicatedTable,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    verifier: CandidateVerifier,
    report: ReconcileReport,
    layout: ScratchLayout,
    outcomes: list[SliceOutcome],
) -> int:
    """Verify and plan every slice (``options.workers`` processes at a time), then repair.

    Every chunk's plan is checked before anything is written: a value that cannot be
    written stops the run with the target untouched. A dry run joins the slices' script
    parts into the SQL script; ``--repair`` applies the checked plans in slice order, so
    memory follows the chunk, not the drift. Returns how many confirmed discrepancies the
    repair settled.
    """
    run_id = report.run_id or new_run_id()
    repairing = options.repair and (verifier.confirmed or options.repair_unconfirmed)
    jobs = [
        SliceJob(
            table,
            settings,
            verifier.scan,
            options.wait,
            verifier.catch_up,
            o,
            layout,
            run_id,
            repairing,
            script=None if repairing else layout.script_part(run_id, o.slice_id),
            verdicts=layout.discrepancy_part(run_id, o.slice_id),
        )
        for o in outcomes
        if o.to_verify
    ]
    if not jobs:  # the dataset is there, empty, for whoever reads it
        with ConfirmedWriter(layout.discrepancy_part(run_id, "none")):
            pass
    try:
        slices = _run_slice_jobs(jobs, options.workers)
    except BaseException:
        shutil.rmtree(layout.planned_chunks(run_id), ignore_errors=True)
        raise
    for planned in slices:
        report.add_verdicts(planned.tally)
        if planned.outcome is not None:  # loaded whole: its rows are known now
            report.source_rows += planned.outcome.source_rows
            report.slices = [
                asdict(planned.outcome) if s["slice_id"] == planned.slice_id else s
                for s in report.slices
            ]
    spill = layout.planned_chunks(run_id)
    if not repairing:
        report.dry_run_sql_path = str(layout.repair_script(run_id))
        with open(report.dry_run_sql_path, "w", encoding="utf-8") as script:
            parts = [p.script for p in slices if p.script is not None and p.writes + p.deletes]
            for part in parts:
                with part.open(encoding="utf-8") as text:
                    shutil.copyfileobj(text, script)
            if not parts:
                script.write(render_script(plan_verified_repair(table, NOTHING_VERIFIED, run_id)))
        shutil.rmtree(spill, ignore_errors=True)
        return 0
    if not any(p.plans for p in slices):
        shutil.rmtree(spill, ignore_errors=True)
        return 0
    rows_by_slice = {o.slice_id: o.source_rows for o in outcomes}
    rows_by_slice.update(
        {p.slice_id: p.outcome.source_rows for p in slices if p.outcome is not None}
    )
    with Repairer(settings.postgres_dsn, run_id, options.repair_settings) as repairer:
        try:
            for planned in slices:
                token_slice = slice_by_id(planned.slice_id, table.slices)
                presence = verifier.source_presence(token_slice, rows_by_slice[planned.slice_id])
                report.undone_after_source_delete += apply_slice(
                    table, planned, repairer, verifier, presence
                )
        finally:
            settled = report.add_repair(repairer.totals())
            # A rerun re-verifies and plans anew: the checked plans are of no further use.
            shutil.rmtree(spill, ignore_errors=True)
    # Rows taken back after a source delete were counted as deleted, not settled twice.
    return settled - report.undone_after_source_delete


def _run_slice_jobs(jobs: list[SliceJob], workers: int) -> list[SlicePlanned]:
    """Every job's result in slice order, ``workers`` processes at a time."""
    if workers <= 1 or len(jobs) <= 1:
        return [verify_and_plan_slice(job) for job in jobs]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_MODULES)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(verify_and_plan_slice, jobs))


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
