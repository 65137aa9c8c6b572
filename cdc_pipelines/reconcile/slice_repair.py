"""One slice's candidates verified, planned and repaired a chunk at a time.

The CLI's whole-table run verifies and plans slices in worker processes with
:func:`verify_and_plan_slice` and applies them in order with :func:`apply_slice`; Dagster's
per-slice reconciliation and repair (:func:`verify_slice`, :func:`repair_slice`) use the same
two, so on both paths memory follows the chunk (``VERIFY_CHUNK`` keys), not the slice's drift
(a slice diffed in its scan also holds its target index, as its diff would).
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.kafka.offsets import CatchUp, CatchUpMethod, TopicWatch
from cdc_pipelines.postgres.repair import (
    RepairOutcome,
    RepairPlan,
    encode_plan,
    new_run_id,
    render_script,
)
from cdc_pipelines.postgres.target_index import read_slice_index
from cdc_pipelines.reconcile.collection import collect_chunk, collected_per_chunk
from cdc_pipelines.reconcile.diff_step import SliceOutcome
from cdc_pipelines.reconcile.index_step import ScanMarker
from cdc_pipelines.reconcile.repair_step import (
    PlannedChunk,
    Repairer,
    RepairSettings,
    plan_verified_repair,
    take_back,
    unconfirmed_reason,
    written_keys,
)
from cdc_pipelines.reconcile.report import ConfirmedWriter, Tally
from cdc_pipelines.reconcile.scratch import ScratchLayout, owner_only, read_candidates
from cdc_pipelines.reconcile.verify import VerificationResult
from cdc_pipelines.reconcile.verify_step import (
    NOTHING_VERIFIED,
    CandidateVerifier,
    CatchUpWait,
    Presence,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_by_id
from cdc_pipelines.rows.keys import Key, driver_keys
from cdc_pipelines.settings import ConnectionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceJob:
    """What a worker needs to verify and plan one slice's candidates."""

    table: ReplicatedTable
    settings: ConnectionSettings
    scan: ScanMarker
    wait: CatchUpWait
    catch_up: CatchUp | None
    outcome: SliceOutcome
    layout: ScratchLayout
    run_id: str
    repairing: bool  # keep the checked plans for the repair
    script: Path | None = None  # write each chunk's plan to this dry-run script too
    verdicts: Path | None = None  # record the confirmed verdicts in this Parquet file


@dataclass(frozen=True)
class SlicePlanned:
    """A slice verified and planned: its verdicts, the changes planned, and where the
    checked plans (repair) or the script (dry run) wait."""

    slice_id: str
    tally: Tally
    plans: tuple[Path, ...]  # checked plans to apply, in order (repair)
    script: Path | None  # the dry-run script, when asked for
    writes: int = 0  # rows the plans upsert or insert
    deletes: int = 0  # rows the plans delete
    outcome: SliceOutcome | None = None  # a slice loaded whole: its counts, from its scan
    # The table topic's end offsets before the slice's source rows were read (repair; None
    # when Kafka could not tell, or when those reads were weaker than the delete
    # consistency): if the topic still ends there after a chunk's commit, no delete can have
    # reached the sink meanwhile, and the source need not be checked again.
    stream_mark: dict[int, int] | None = None


@owner_only
def verify_and_plan_slice(job: SliceJob) -> SlicePlanned:
    """Verify one slice's candidates a chunk at a time; record the verdicts (``job.verdicts``)
    and check each chunk's plan, writing it to the dry-run script (``job.script``) and, when
    ``job.repairing``, to a scratch file for the repair. Runs in a slice worker process."""
    table, outcome, layout, run_id = job.table, job.outcome, job.layout, job.run_id
    token_slice = slice_by_id(outcome.slice_id, table.slices)
    spill = layout.planned_chunks(run_id)
    tally, plans, writes, deletes = Tally(), [], 0, 0
    stream_mark = None
    with ExitStack() as stack:
        stack.enter_context(collected_per_chunk())
        verifier = stack.enter_context(
            CandidateVerifier(table, job.settings, job.scan, job.wait, catch_up=job.catch_up)
        )
        if (  # before any source row is read
            job.repairing and job.scan.end_offsets is not None and verifier.reads_confirm_deletes()
        ):
            stream_mark = TopicWatch(job.settings.kafka_bootstrap_servers, table.topic).mark()
        confirmed = (
            None if job.verdicts is None else stack.enter_context(ConfirmedWriter(job.verdicts))
        )
        script = None
        if job.script is not None:
            job.script.parent.mkdir(parents=True, exist_ok=True)
            script = stack.enter_context(job.script.open("w"))
        index_rows = 0
        if outcome.diff_in_scan:
            index = read_slice_index(
                layout.index_dir, outcome.slice_id, table.canonical, tokens=True
            )
            index_rows = index.num_rows
            chunks = verifier.verify_diff_in_scan(token_slice, index)
        elif outcome.whole:
            index = read_slice_index(layout.index_dir, outcome.slice_id, table.canonical)
            index_keys = driver_keys(index, table.canonical)
            index_rows = len(index_keys)
            chunks = verifier.verify_whole_slice(token_slice, index_keys)
        else:
            candidates = read_candidates(Path(outcome.candidates_path))
            chunks = verifier.verify_in_chunks(candidates, token_slice, outcome.source_rows)
        for number, verification in enumerate(chunks):
            collect_chunk()
            tally += Tally.of(verification)
            if confirmed is not None:
                confirmed.write(verification)
            if script is None and not job.repairing:
                continue  # verdicts only
            plan = plan_verified_repair(table, verification, run_id)
            if plan.is_empty:
                continue
            writes += plan.write_count
            deletes += plan.delete_count
            if script is not None:
                script.write(render_script(plan))
            if job.repairing:
                path = spill / f"slice={outcome.slice_id}.{number:06d}.pickle"
                _spill_chunk(path, plan, verification, verifier)
                plans.append(path)
            del plan, verification  # the next chunk's collection walks only its own rows
        if script is not None and not writes + deletes:  # says there is nothing to repair
            script.write(render_script(plan_verified_repair(table, NOTHING_VERIFIED, run_id)))
    loaded = None
    if outcome.whole:  # its counts are its scan's (a diff's, with the index, when diffed)
        loaded = replace(
            outcome,
            source_rows=verifier.scanned,
            missing=verifier.scanned - verifier.scanned_in_index,
            extra=(
                verifier.extra_in_scan
                if outcome.diff_in_scan
                else index_rows - verifier.scanned_in_index
            ),
            mismatched=(
                verifier.mismatched_in_scan
                if outcome.diff_in_scan
                else tally.mismatched + tally.target_ahead
            ),
        )
        layout.slice_result(outcome.slice_id).write_text(json.dumps(asdict(loaded), indent=2))
    return SlicePlanned(
        outcome.slice_id,
        tally,
        tuple(plans),
        job.script,
        writes,
        deletes,
        loaded,
        stream_mark,
    )


def _spill_chunk(
    path: Path, plan: RepairPlan, verification: VerificationResult, verifier: CandidateVerifier
) -> None:
    """Encode a chunk's plan for COPY (here, in the worker: the apply then only streams
    bytes) and write it, with the keys it writes and its span, to ``path``."""
    encoded = encode_plan(verifier.target_connection(), plan)
    chunk = PlannedChunk(encoded, written_keys(verification), verifier.span)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))


def apply_slice(
    table: ReplicatedTable,
    planned: SlicePlanned,
    repairer: Repairer,
    verifier: CandidateVerifier,
    presence: Presence,
) -> int:
    """Apply a slice's checked plans in order; returns the rows taken back after a source
    delete. A chunk verified by a scan is checked at the source right after it commits, by
    one scan of its token span, while the next chunk is applied (the check reads ScyllaDB,
    the apply writes PostgreSQL); the other chunks' keys once for the slice, after all of
    them (and after a failing chunk, what did commit). A committed chunk is not checked
    when the table's topic gained nothing since the slice was read (see
    :attr:`SlicePlanned.stream_mark`). Each plan's file is removed once applied."""
    undone = skipped = 0
    quiet = TopicWatch(verifier.settings.kafka_bootstrap_servers, table.topic)
    pending: list[tuple[Key, int]] = []
    checks: list[_SpanCheck] = []  # committed chunks whose check is running, oldest first
    verifier.connect_source()  # before the check thread shares the session
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="take-back") as checker:
        try:
            for path in planned.plans:
                chunk: PlannedChunk = pickle.loads(path.read_bytes())
                if chunk.span is not None and not chunk.plan.is_empty:
                    check = verifier.presence_in(chunk.span)
                    try:
                        repairer.apply(chunk.plan)
                    except BaseException:
                        # Its batches commit one by one: what did commit is still checked.
                        with contextlib.suppress(CdcPipelinesError):
                            take_back(table, chunk.written, repairer, check)
                        raise
                    if chunk.written:  # a delete-only chunk wrote nothing to take back
                        keys = [key for key, _ in chunk.written]
                        # Asked after the commit, on the check's thread: the next chunk
                        # need not wait for Kafka's answer.
                        present = checker.submit(_unless_quiet, quiet, planned, check, keys)
                        checks.append(_SpanCheck(chunk.written, present))
                    while len(checks) > 1:  # the previous chunk's check, now it is done
                        settled = checks.pop(0).settle(table, repairer)
                        skipped += settled is None
                        undone += settled or 0
                elif not chunk.plan.is_empty:
                    # Before the apply: its batches commit one by one, and a key a failing
                    # chunk already wrote must be checked too.
                    pending.extend(chunk.written)
                    repairer.apply(chunk.plan)
                path.unlink()
        except BaseException:
            for running in checks:  # every committed chunk is still checked, each on its own
                with contextlib.suppress(CdcPipelinesError):
                    running.settle(table, repairer)
            with contextlib.suppress(CdcPipelinesError):
                take_back(table, pending, repairer, presence)
            raise
        while checks:
            settled = checks.pop(0).settle(table, repairer)
            skipped += settled is None
            undone += settled or 0
    if pending and quiet.unchanged_since(planned.stream_mark):
        skipped += 1
    elif pending:
        undone += take_back(table, pending, repairer, presence)
    if skipped:
        log.info(
            "table %s, slice %s: the check for keys deleted at the source meanwhile was "
            "skipped for %d committed chunk(s): topic %s gained nothing since the slice was "
            "read (TTL expiries and partition or range deletes are left to the next run)",
            table.source,
            planned.slice_id,
            skipped,
            table.topic,
        )
    return undone


def _unless_quiet(
    quiet: TopicWatch, planned: SlicePlanned, check: Presence, keys: list[Key]
) -> list[bool] | None:
    """Which ``keys`` the source still has, or None when the table's topic gained nothing
    since the slice was read (then no delete can have reached the sink: nothing to check)."""
    if quiet.unchanged_since(planned.stream_mark):
        return None
    return check(keys)


@dataclass(frozen=True)
class _SpanCheck:
    """A committed chunk's written keys and the running check of which the source still
    has (None when the check was skipped on a quiet topic)."""

    written: tuple[tuple[Key, int], ...]
    present: Future[list[bool] | None]

    def settle(self, table: ReplicatedTable, repairer: Repairer) -> int | None:
        """Take back the keys the check found gone (see :func:`take_back`); None when the
        check was skipped."""
        found = self.present.result()
        if found is None:
            return None
        return take_back(table, self.written, repairer, lambda _keys: found)


@dataclass(frozen=True)
class SliceVerification:
    """One slice's verdicts after the re-read, and how the sink's catch-up was established."""

    tally: Tally
    catch_up: CatchUp | None

    @property
    def catch_up_confirmed(self) -> bool:
        """Whether the sink was shown, by its committed offsets, to have caught up."""
        return self.catch_up is None or (
            self.catch_up.caught_up and self.catch_up.method is CatchUpMethod.OFFSETS
        )

    @property
    def detail(self) -> str:
        return self.catch_up.detail if self.catch_up is not None else "no candidates"


@dataclass(frozen=True)
class SliceRepair:
    """The verified repair of one slice: its verdicts, the changes planned (all in the SQL
    script), and, if applied, the outcome."""

    verification: SliceVerification
    run_id: str
    writes: int  # rows planned to be upserted or inserted
    deletes: int  # rows planned to be deleted
    sql_path: Path
    outcome: RepairOutcome | None
    undone: int = 0  # rows taken back because the source deleted their keys meanwhile
    refused: str | None = None  # why an asked-for repair changed nothing

    @property
    def planned(self) -> int:
        return self.writes + self.deletes


def _slice_job(
    table: ReplicatedTable,
    outcome: SliceOutcome,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    verifier: CandidateVerifier,
    run_id: str,
    *,
    repairing: bool = False,
    script: Path | None = None,
) -> SliceJob:
    """The slice's job for :func:`verify_and_plan_slice`, once the sink is waited for."""
    if outcome.to_verify:
        verifier.wait_for_sink()
    return SliceJob(
        table,
        settings,
        verifier.scan,
        verifier.wait,
        verifier.catch_up,
        outcome,
        layout,
        run_id,
        repairing,
        script,
    )


def verify_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    wait: CatchUpWait | None = None,
) -> SliceVerification:
    """Re-read the diffed slice's candidates on both sides once the sink passed the scan's
    offsets, a chunk at a time."""
    outcome = SliceOutcome.read(layout.slice_result(slice_id))
    with CandidateVerifier(
        table, settings, ScanMarker.read(layout), wait or CatchUpWait()
    ) as verifier:
        job = _slice_job(table, outcome, settings, layout, verifier, new_run_id())
        return SliceVerification(verify_and_plan_slice(job).tally, verifier.catch_up)


@owner_only
def repair_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    apply: bool,
    repair: RepairSettings | None = None,
) -> SliceRepair:
    """Verify the diffed slice's candidates again, plan the repair a chunk at a time into its
    SQL script, and apply the checked plans on request.

    An asked-for repair is refused when the sink's catch-up could not be confirmed, unless
    ``repair.allow_unconfirmed``.
    """
    repair = repair or RepairSettings()
    run_id = new_run_id()
    sql_path = layout.slice_repair_script(slice_id, run_id)
    outcome = SliceOutcome.read(layout.slice_result(slice_id))
    with CandidateVerifier(table, settings, ScanMarker.read(layout)) as verifier:
        job = _slice_job(table, outcome, settings, layout, verifier, run_id, script=sql_path)
        refused = None
        if apply and not verifier.confirmed and not repair.allow_unconfirmed:
            refused = unconfirmed_reason(verifier.detail)
        job = replace(job, repairing=apply and refused is None)
        try:
            planned = verify_and_plan_slice(job)
            verification = SliceVerification(planned.tally, verifier.catch_up)
            if not planned.plans:
                refused = refused if planned.writes + planned.deletes else None
                return SliceRepair(
                    verification,
                    run_id,
                    planned.writes,
                    planned.deletes,
                    sql_path,
                    None,
                    refused=refused,
                )
            presence = verifier.source_presence(
                slice_by_id(slice_id, table.slices), outcome.source_rows
            )
            with Repairer(settings.postgres_dsn, run_id, repair) as repairer:
                undone = apply_slice(table, planned, repairer, verifier, presence)
                done = repairer.totals()
        finally:
            shutil.rmtree(layout.planned_chunks(run_id), ignore_errors=True)
    return SliceRepair(
        verification, run_id, planned.writes, planned.deletes, sql_path, done, undone=undone
    )
