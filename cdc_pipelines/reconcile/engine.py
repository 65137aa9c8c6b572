"""Reconciliation of one table: target index → per-slice diff → verification → report → repair.

The steps are separate so the Dagster layer can run them as assets (the target
index once, the slices as partitions in parallel) and the CLI can run them in one
go. Data flows one way: readers → canonical Arrow → diff → verify → repair.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.repair import (
    RepairOutcome,
    RepairPlan,
    apply_repair,
    batch_count,
    new_run_id,
    plan_repair,
)
from cdc_pipelines.postgres.target_index import TargetIndexManifest, build_target_index
from cdc_pipelines.reconcile.diff import DiffResult, diff_slice
from cdc_pipelines.reconcile.verify import VerificationResult
from cdc_pipelines.rows.canonical import CanonicalSchema
from cdc_pipelines.rows.keys import driver_keys
from cdc_pipelines.settings import ConnectionSettings

if TYPE_CHECKING:
    from cdc_pipelines.kafka.offsets import CatchUp

DEFAULT_SCRATCH_DIR = Path.home() / ".cache" / "cdc-pipelines" / "scratch"
SLICE_RESULT_SUFFIX = ".result.json"
SCAN_MARKER = "scan.json"
KIND_COLUMN = "kind"

Progress = Callable[[str, int], None]


def canonical_schema(config: PipelineConfig, table: TableSpec) -> CanonicalSchema:
    return CanonicalSchema.from_table(
        table,
        version_column=config.defaults.version_column,
        tolerances=config.tolerances_for(table),
        user_types=config.user_types,
    )


def table_scratch(scratch: Path, table: TableSpec) -> Path:
    """The table's directory under the scratch root (target index, slice results, reports)."""
    return scratch / f"{table.keyspace}.{table.table}"


@dataclass(frozen=True)
class SliceOutcome:
    """The diff of one slice, before verification."""

    table: str
    slice_id: str
    source_rows: int
    target_rows: int
    missing: int
    extra: int
    mismatched: int
    duration_s: float
    candidates_path: str

    @property
    def discrepancies(self) -> int:
        return self.missing + self.extra + self.mismatched

    def write(self, directory: Path) -> Path:
        path = directory / f"slice={self.slice_id}{SLICE_RESULT_SUFFIX}"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


@dataclass
class ReconcileReport:
    """The JSON report of one table's reconciliation."""

    table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    in_flight: int = 0
    resolved: int = 0
    repaired: dict[str, int] = field(default_factory=lambda: {"upserted": 0, "deleted": 0})
    duration_s: float = 0.0
    discrepancies_path: str | None = None
    dry_run_sql_path: str | None = None
    slices: list[dict[str, object]] = field(default_factory=list)
    verification: str = "not run"
    skipped_newer: int = 0
    remaining: int = 0
    run_id: str | None = None  # names the repair script, the Parquet file and the audit rows

    @property
    def confirmed(self) -> int:
        return self.missing + self.extra + self.mismatched

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "confirmed": self.confirmed}, indent=2, default=str)


def diff_candidates(result: DiffResult, schema: CanonicalSchema) -> pa.Table:
    """All discrepancy candidates of a slice in one table: keys, kind and the differing columns."""
    key_names = [c.name for c in schema.key_columns]
    parts = []
    for kind, table in (("missing", result.missing), ("extra", result.extra)):
        keys = table.select(key_names)
        parts.append(
            keys.append_column(
                KIND_COLUMN, pa.array([kind] * keys.num_rows, pa.string())
            ).append_column(
                "differing_columns", pa.array([[]] * keys.num_rows, pa.list_(pa.string()))
            )
        )
    mismatched = result.mismatched
    keys = mismatched.select(key_names)
    differing = (
        mismatched.column("differing_columns").cast(pa.list_(pa.string()))
        if "differing_columns" in mismatched.column_names
        else pa.array([[]] * keys.num_rows, pa.list_(pa.string()))
    )
    parts.append(
        keys.append_column(
            KIND_COLUMN, pa.array(["mismatched"] * keys.num_rows, pa.string())
        ).append_column("differing_columns", differing)
    )
    return pa.concat_tables(parts)


def write_candidates(path: Path, candidates: pa.Table) -> None:
    with ipc.new_file(str(path), candidates.schema) as writer:
        writer.write_table(candidates)


def read_candidates(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return ipc.open_file(source).read_all()


def reconcile_slice(
    config: PipelineConfig,
    table: TableSpec,
    slice_key: str,
    settings: ConnectionSettings,
    scratch: Path,
    on_rows: Callable[[int], None] | None = None,
) -> SliceOutcome:
    """Read the slice from the source, diff it against the target index, store the candidates."""
    from cdc_pipelines.postgres.target_index import read_slice_index
    from cdc_pipelines.ring.slices import slice_by_id
    from cdc_pipelines.scylla.reader import read_slice
    from cdc_pipelines.scylla.session import cql_session

    started = time.monotonic()
    schema = canonical_schema(config, table)
    directory = table_scratch(scratch, table)
    index_dir = directory / "target_index"
    count = config.slices_for(table)
    token_slice = slice_by_id(slice_key, count)
    with cql_session(settings, config.scylla) as session:
        source = read_slice(
            session,
            table,
            schema,
            token_slice,
            concurrency=config.scylla.concurrency,
            fetch_size=config.scylla.fetch_size,
            on_rows=on_rows,
        )
    target = read_slice_index(index_dir, slice_key, schema)
    result = diff_slice(source, target, schema, config.tolerances_for(table))
    candidates = diff_candidates(result, schema)
    results_dir = directory / "slices"
    results_dir.mkdir(parents=True, exist_ok=True)
    candidates_path = results_dir / f"slice={slice_key}.candidates.arrow"
    write_candidates(candidates_path, candidates)
    outcome = SliceOutcome(
        table=table.source,
        slice_id=slice_key,
        source_rows=result.source_rows,
        target_rows=result.target_rows,
        missing=result.missing_count,
        extra=result.extra_count,
        mismatched=result.mismatched_count,
        duration_s=round(time.monotonic() - started, 3),
        candidates_path=str(candidates_path),
    )
    outcome.write(results_dir)
    return outcome


def build_index(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    scratch: Path,
    on_rows: Callable[[int], None] | None = None,
) -> TargetIndexManifest:
    """The target index of the table under the scratch directory (see ``postgres.target_index``).

    The scan marker (cut-off time and the topic's end offsets) is recorded first, next to
    the index: verification later waits for the sink to pass those offsets and treats rows
    written after the cut-off as in flight.
    """
    schema = canonical_schema(config, table)
    directory = table_scratch(scratch, table)
    directory.mkdir(parents=True, exist_ok=True)
    ScanMarker.now(config, table, settings).write(directory)
    return build_target_index(
        settings.postgres_dsn,
        table,
        schema,
        config.slices_for(table),
        directory / "target_index",
        on_rows=on_rows,
    )


@dataclass(frozen=True)
class ReconcileOptions:
    """How to run one table's reconciliation from the CLI."""

    scratch: Path = DEFAULT_SCRATCH_DIR
    repair: bool = False
    workers: int = 2  # slice processes, and connections applying repair batches
    settle_seconds: float = 5.0
    verify_timeout_s: float = 120.0
    audit_detail: AuditDetail = AuditDetail.KEYS


class _Progress(Protocol):
    """What the engine reports while it runs (see ``reconcile.progress.SliceProgress``)."""

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


def _reconcile_slice_in_worker(
    config_json: str, source: str, slice_key: str, settings: ConnectionSettings, scratch: str
) -> SliceOutcome:
    # Worker processes get the declaration as JSON: pydantic models pickle, but a
    # plain document keeps the worker independent of the parent's state.
    config = PipelineConfig.model_validate_json(config_json)
    return reconcile_slice(config, config.table(source), slice_key, settings, Path(scratch))


def diff_all_slices(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    progress: _Progress,
) -> list[SliceOutcome]:
    """Diff every slice, ``options.workers`` processes at a time (the CQL driver is CPU-bound)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from cdc_pipelines.ring.slices import slice_ids

    keys = slice_ids(config.slices_for(table))
    outcomes: list[SliceOutcome] = []
    if options.workers <= 1:
        for key in keys:
            outcome = reconcile_slice(config, table, key, settings, options.scratch)
            outcomes.append(outcome)
            progress.add_rows(outcome.source_rows)
            progress.slice_done(key, outcome.discrepancies, outcome.source_rows)
        return outcomes
    config_json = config.model_dump_json()
    # Workers come from a fork server, not from this process: a forked child would start
    # with the target-index pass's resident memory and add its slice on top.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=options.workers, mp_context=context) as pool:
        futures = [
            pool.submit(
                _reconcile_slice_in_worker,
                config_json,
                table.source,
                key,
                settings,
                str(options.scratch),
            )
            for key in keys
        ]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes.append(outcome)
            progress.add_rows(outcome.source_rows)
            progress.slice_done(outcome.slice_id, outcome.discrepancies, outcome.source_rows)
    return sorted(outcomes, key=lambda o: o.slice_id)


def run_reconciliation(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    progress: _Progress | None = None,
) -> ReconcileReport:
    """Index the target, diff every slice, verify the candidates, report, and repair on request.

    With ``options.workers`` > 1 slices are diffed in processes started from a fork server,
    which imports the caller's main module: a script calling this needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    progress = progress or _Silent()
    started = time.monotonic()
    progress.phase(f"{table.target}: building the target index")
    build_index(config, table, settings, options.scratch)
    scan = ScanMarker.read(table_scratch(options.scratch, table))
    progress.phase(f"{table.source}: diffing {config.slices_for(table)} token slices")
    outcomes = diff_all_slices(config, table, settings, options, progress)
    report = ReconcileReport(table=table.source)
    for outcome in outcomes:
        report.source_rows += outcome.source_rows
        report.target_rows += outcome.target_rows
        report.slices.append(asdict(outcome))
    total = sum(o.missing + o.extra + o.mismatched for o in outcomes)
    progress.phase(f"{table.source}: verifying {total} candidate(s)")
    directory = table_scratch(options.scratch, table)
    run_id = new_run_id()
    report.run_id = run_id
    parquet = directory / f"discrepancies-{run_id}.parquet"
    script = directory / f"repair-{run_id}.sql"
    with_candidates = [o for o in outcomes if o.missing + o.extra + o.mismatched]
    # Slice by slice: verify, record and plan one slice's candidates, then drop them, so
    # memory follows the slice, not the table's drift. Every slice is planned before any
    # is repaired: a row that cannot be written stops the run with nothing changed.
    with (
        CandidateVerifier(config, table, settings, scan, options) as verifier,
        ConfirmedWriter(parquet) as confirmed,
        script.open("w", encoding="utf-8") as sql_out,
    ):
        planned = False
        for outcome in with_candidates:
            verification = verifier.verify([read_candidates(Path(outcome.candidates_path))])
            add_verdicts(report, verification)
            confirmed.write(verification)
            plan = plan_verified_repair(config, table, verification, run_id)
            if not plan.is_empty:
                sql_out.write(plan.sql_script())
                planned = True
        if not planned:
            sql_out.write(
                plan_verified_repair(config, table, NOTHING_VERIFIED, run_id).sql_script()
            )
        report.verification = (
            verifier.catch_up.detail if verifier.catch_up is not None else "no candidates"
        )
        report.discrepancies_path = str(parquet)
        report.dry_run_sql_path = str(script)
        settled = 0
        if options.repair and planned:
            progress.phase(f"{table.target}: repairing {report.confirmed} discrepancies")
            settled = _repair_by_slice(
                config,
                table,
                settings,
                options,
                verifier,
                run_id,
                report,
                [Path(o.candidates_path) for o in with_candidates],
            )
    report.remaining = max(0, report.confirmed - settled)
    report.duration_s = round(time.monotonic() - started, 3)
    return report


@dataclass(frozen=True)
class ScanMarker:
    """When a scan started and how far the table's topic had been written then."""

    cutoff_us: int
    end_offsets: dict[int, int] | None
    kafka_error: str | None = None

    @classmethod
    def now(
        cls, config: PipelineConfig, table: TableSpec, settings: ConnectionSettings
    ) -> ScanMarker:
        from cdc_pipelines.errors import ServiceError
        from cdc_pipelines.kafka.offsets import end_offsets

        cutoff_us = time.time_ns() // 1000
        try:
            offsets = end_offsets(settings.kafka_bootstrap_servers, config.topic_for(table))
        except ServiceError as exc:
            return cls(cutoff_us, None, str(exc))
        return cls(cutoff_us, offsets)

    def write(self, directory: Path) -> None:
        (directory / SCAN_MARKER).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, directory: Path) -> ScanMarker:
        try:
            document = json.loads((directory / SCAN_MARKER).read_text())
        except FileNotFoundError:
            raise ReconcileError(
                f"no scan marker in {directory}; build the target index first"
            ) from None
        offsets = document.get("end_offsets")
        return cls(
            cutoff_us=int(document["cutoff_us"]),
            end_offsets={int(k): int(v) for k, v in offsets.items()} if offsets else None,
            kafka_error=document.get("kafka_error"),
        )


class CandidateVerifier:
    """Verifies candidate tables one after another on one CQL session and one connection.

    The first non-empty call waits for the sink to pass the scan's offsets; later calls
    reuse that catch-up, so a table's slices can be verified (and dropped) one at a time.
    """

    def __init__(
        self,
        config: PipelineConfig,
        table: TableSpec,
        settings: ConnectionSettings,
        scan: ScanMarker,
        options: ReconcileOptions,
    ) -> None:
        self.config, self.table, self.settings = config, table, settings
        self.scan, self.options = scan, options
        self.schema = canonical_schema(config, table)
        self.catch_up: CatchUp | None = None
        self._stack = ExitStack()
        self._session: Any = None
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> CandidateVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def verify(self, candidates: Sequence[pa.Table]) -> VerificationResult:
        from cdc_pipelines.kafka.offsets import sink_group, wait_until_caught_up
        from cdc_pipelines.postgres.key_reads import read_target_rows
        from cdc_pipelines.reconcile.verify import (
            Candidate,
            CandidateKind,
            verify_discrepancies,
        )
        from cdc_pipelines.scylla.key_reads import read_source_rows
        from cdc_pipelines.scylla.session import cql_session

        config, table = self.config, self.table
        keyed: list[Candidate] = []
        for part in candidates:
            kinds = part.column(KIND_COLUMN).to_pylist()
            for key, kind in zip(driver_keys(part, self.schema), kinds, strict=True):
                keyed.append(Candidate(key, CandidateKind(kind)))
        if not keyed:
            return VerificationResult((), (), ())
        if self.catch_up is None:
            self.catch_up = wait_until_caught_up(
                self.settings.kafka_bootstrap_servers,
                sink_group(config.sink_name_for(table)),
                config.topic_for(table),
                self.scan.end_offsets or {},
                self.options.verify_timeout_s,
                settle_window_s=self.options.settle_seconds,
            )
        if self._conn is None:
            self._session = self._stack.enter_context(cql_session(self.settings, config.scylla))
            self._conn = self._stack.enter_context(psycopg.connect(self.settings.postgres_dsn))
        return verify_discrepancies(
            table,
            keyed,
            cutoff_us=self.scan.cutoff_us,
            read_source=partial(read_source_rows, self._session, table),
            read_target=partial(
                read_target_rows,
                self._conn,
                table,
                version_column=config.defaults.version_column,
                user_types=config.user_types,
            ),
            version_column=config.defaults.version_column,
            tolerances=config.tolerances_for(table),
            user_types=config.user_types,
            catch_up=self.catch_up,
        )


def verify_candidates(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    candidates: list[pa.Table],
    scan: ScanMarker,
    options: ReconcileOptions,
) -> VerificationResult:
    """Wait for the sink to pass the scan's offsets, then re-read every candidate on both sides."""
    with CandidateVerifier(config, table, settings, scan, options) as verifier:
        return verifier.verify(candidates)


class _Repairer:
    """Applies one plan after another under one run id, batches numbered on from the last."""

    def __init__(self, settings: ConnectionSettings, run_id: str, options: ReconcileOptions):
        self.settings, self.run_id, self.options = settings, run_id, options
        self.next_batch = 0
        self._stack = ExitStack()
        self._target: Any = None

    def __enter__(self) -> _Repairer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def apply(self, plan: RepairPlan) -> RepairOutcome:
        workers = self.options.workers
        if self._target is None:
            if workers <= 1:
                self._target = self._stack.enter_context(
                    psycopg.connect(self.settings.postgres_dsn)
                )
            else:
                from psycopg_pool import ConnectionPool

                self._target = self._stack.enter_context(
                    ConnectionPool(
                        self.settings.postgres_dsn, min_size=workers, max_size=workers, open=True
                    )
                )
        outcome = apply_repair(
            self._target,
            plan,
            self.run_id,
            audit_detail=self.options.audit_detail,
            workers=max(1, workers),
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


def plan_verified_repair(
    config: PipelineConfig, table: TableSpec, verification: VerificationResult, run_id: str
) -> RepairPlan:
    """The repair of the confirmed discrepancies: fresh source rows up, verified extras out."""
    return plan_repair(
        table,
        config.defaults.version_column,
        verification.upsert_rows,
        verification.delete_rows,
        inserts=verification.insert_rows,
        run_id=run_id,
        user_types=config.user_types,
    )


def verify_slice(
    config: PipelineConfig,
    table: TableSpec,
    slice_key: str,
    settings: ConnectionSettings,
    scratch: Path,
    options: ReconcileOptions | None = None,
) -> VerificationResult:
    """Re-read the slice's candidates on both sides once the sink passed the scan's offsets."""
    directory = table_scratch(scratch, table)
    candidates = read_candidates(directory / "slices" / f"slice={slice_key}.candidates.arrow")
    return verify_candidates(
        config,
        table,
        settings,
        [candidates],
        ScanMarker.read(directory),
        options or ReconcileOptions(scratch=scratch),
    )


def repair_slice(
    config: PipelineConfig,
    table: TableSpec,
    slice_key: str,
    settings: ConnectionSettings,
    scratch: Path,
    apply: bool,
    audit_detail: AuditDetail = AuditDetail.KEYS,
) -> SliceRepair:
    """Verify the slice's candidates again, plan the repair, write its SQL; apply on request."""
    verification = verify_slice(config, table, slice_key, settings, scratch)
    run_id = new_run_id()
    plan = plan_verified_repair(config, table, verification, run_id)
    sql_path = table_scratch(scratch, table) / "slices" / f"slice={slice_key}.repair-{run_id}.sql"
    sql_path.write_text(plan.sql_script())
    outcome = None
    if apply and not plan.is_empty:
        # As many connections as the CLI uses by default (ReconcileOptions.workers).
        options = ReconcileOptions(scratch=scratch, audit_detail=audit_detail)
        with _Repairer(settings, run_id, options) as repairer:
            outcome = repairer.apply(plan)
    return SliceRepair(verification, plan, sql_path, outcome)


NOTHING_VERIFIED = VerificationResult((), (), ())


def _repair_by_slice(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    options: ReconcileOptions,
    verifier: CandidateVerifier,
    run_id: str,
    report: ReconcileReport,
    candidate_files: Sequence[Path],
) -> int:
    """Re-verify and repair each slice's candidates (fresh reads: time has passed since the
    dry run); returns how many confirmed discrepancies were settled."""
    settled = 0
    with _Repairer(settings, run_id, options) as repairer:
        for candidates in candidate_files:
            verification = verifier.verify([read_candidates(candidates)])
            plan = plan_verified_repair(config, table, verification, run_id)
            if plan.is_empty:
                continue
            applied = repairer.apply(plan)
            report.repaired["upserted"] += applied.upserted
            report.repaired["deleted"] += applied.deleted
            report.skipped_newer += applied.skipped_newer
            settled += applied.upserted + applied.deleted + applied.skipped_newer
            settled += applied.skipped_unchanged + applied.skipped_absent
    return settled


def add_verdicts(report: ReconcileReport, verification: VerificationResult) -> None:
    """Add one verification's counts by confirmed kind, resolved and in flight."""
    kinds = [c.kind.value for c in verification.confirmed]
    report.missing += kinds.count("missing")
    report.extra += kinds.count("extra")
    report.mismatched += kinds.count("mismatched")
    report.in_flight += len(verification.in_flight)
    report.resolved += len(verification.resolved)


CONFIRMED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("kind", pa.string()),
        ("source_version", pa.int64()),
        ("target_version", pa.int64()),
    ]
)


class ConfirmedWriter:
    """Every confirmed discrepancy (key as JSON, kind, versions) appended to one Parquet file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(path, CONFIRMED_SCHEMA)

    def __enter__(self) -> ConfirmedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def write(self, verification: VerificationResult) -> None:
        confirmed = verification.confirmed
        if not confirmed:
            return
        self._writer.write_table(
            pa.table(
                {
                    "key": [json.dumps(list(c.key), default=str) for c in confirmed],
                    "kind": [c.kind.value for c in confirmed],
                    "source_version": [c.source.version if c.source else None for c in confirmed],
                    "target_version": [c.target_version for c in confirmed],
                },
                schema=CONFIRMED_SCHEMA,
            )
        )


def _scan_slice_rows(
    config_json: str, source: str, slice_key: str, settings: ConnectionSettings
) -> int:
    """Rows of one slice as read by the source reader (the scan alone, for benchmarks)."""
    from cdc_pipelines.ring.slices import slice_by_id
    from cdc_pipelines.scylla.reader import read_slice
    from cdc_pipelines.scylla.session import cql_session

    config = PipelineConfig.model_validate_json(config_json)
    table = config.table(source)
    with cql_session(settings, config.scylla) as session:
        scanned = read_slice(
            session,
            table,
            canonical_schema(config, table),
            slice_by_id(slice_key, config.slices_for(table)),
            concurrency=config.scylla.concurrency,
            fetch_size=config.scylla.fetch_size,
        )
    return scanned.num_rows
