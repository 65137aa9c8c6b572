"""Reconciliation of one table: target index → per-slice diff → verification → report → repair.

The steps are separate so the Dagster layer can run them as assets (the target
index once, the slices as partitions in parallel) and the CLI can run them in one
go. Data flows one way: readers → canonical Arrow → diff → verify → repair.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

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
    new_run_id,
    plan_repair,
)
from cdc_pipelines.postgres.target_index import TargetIndexManifest, build_target_index
from cdc_pipelines.reconcile.canonical import CanonicalSchema
from cdc_pipelines.reconcile.diff import DiffResult, diff_slice
from cdc_pipelines.reconcile.keys import driver_keys
from cdc_pipelines.reconcile.verify import VerificationResult
from cdc_pipelines.settings import ConnectionSettings

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
    from cdc_pipelines.scylla.reader import read_slice
    from cdc_pipelines.scylla.session import cql_session
    from cdc_pipelines.scylla.slices import slice_by_id

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
    with psycopg.connect(settings.postgres_dsn) as conn:
        return build_target_index(
            conn,
            table,
            schema,
            config.slices_for(table),
            directory / "target_index",
            on_rows=on_rows,
            dsn=settings.postgres_dsn,
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

    from cdc_pipelines.scylla.slices import slice_ids

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
    with ProcessPoolExecutor(max_workers=options.workers) as pool:
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
    """Index the target, diff every slice, verify the candidates, report, and repair on request."""
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
    candidates = [read_candidates(Path(o.candidates_path)) for o in outcomes]
    progress.phase(f"{table.source}: verifying {sum(c.num_rows for c in candidates)} candidate(s)")
    verification = verify_candidates(config, table, settings, candidates, scan, options)
    summarize(report, verification)
    directory = table_scratch(options.scratch, table)
    run_id = new_run_id()
    report.run_id = run_id
    report.discrepancies_path = str(
        write_confirmed(directory / f"discrepancies-{run_id}.parquet", verification)
    )
    plan = plan_verified_repair(config, table, verification, run_id)
    script = directory / f"repair-{run_id}.sql"
    script.write_text(plan.sql_script())
    report.dry_run_sql_path = str(script)
    if options.repair and (plan.upsert_count or plan.delete_count):
        progress.phase(
            f"{table.target}: repairing {plan.upsert_count} upsert(s), {plan.delete_count} delete(s)"
        )
        applied = _apply_with_workers(settings, plan, run_id, options)
        report.repaired = {"upserted": applied.upserted, "deleted": applied.deleted}
        report.skipped_newer = applied.skipped_newer
        settled = applied.upserted + applied.deleted + applied.skipped_newer
        settled += applied.skipped_unchanged + applied.skipped_absent
        report.remaining = max(0, report.confirmed - settled)
    else:
        report.remaining = report.confirmed
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


def verify_candidates(
    config: PipelineConfig,
    table: TableSpec,
    settings: ConnectionSettings,
    candidates: list[pa.Table],
    scan: ScanMarker,
    options: ReconcileOptions,
) -> VerificationResult:
    """Wait for the sink to pass the scan's offsets, then re-read every candidate on both sides."""
    from functools import partial

    from cdc_pipelines.kafka.offsets import sink_group, wait_until_caught_up
    from cdc_pipelines.reconcile.verify import (
        Candidate,
        CandidateKind,
        read_target_rows,
        verify_discrepancies,
    )
    from cdc_pipelines.scylla.key_reads import read_source_rows
    from cdc_pipelines.scylla.session import cql_session

    schema = canonical_schema(config, table)
    keyed: list[Candidate] = []
    for part in candidates:
        kinds = part.column(KIND_COLUMN).to_pylist()
        for key, kind in zip(driver_keys(part, schema), kinds, strict=True):
            keyed.append(Candidate(key, CandidateKind(kind)))
    if not keyed:
        return VerificationResult((), (), ())
    catch_up = wait_until_caught_up(
        settings.kafka_bootstrap_servers,
        sink_group(config.sink_name_for(table)),
        config.topic_for(table),
        scan.end_offsets or {},
        options.verify_timeout_s,
        settle_window_s=options.settle_seconds,
    )
    with (
        cql_session(settings, config.scylla) as session,
        psycopg.connect(settings.postgres_dsn) as conn,
    ):
        return verify_discrepancies(
            table,
            keyed,
            cutoff_us=scan.cutoff_us,
            read_source=partial(read_source_rows, session, table),
            read_target=partial(
                read_target_rows,
                conn,
                table,
                version_column=config.defaults.version_column,
                user_types=config.user_types,
            ),
            version_column=config.defaults.version_column,
            tolerances=config.tolerances_for(table),
            user_types=config.user_types,
            catch_up=catch_up,
        )


def _apply_with_workers(
    settings: ConnectionSettings, plan: RepairPlan, run_id: str, options: ReconcileOptions
) -> RepairOutcome:
    """Apply on ``options.workers`` connections (batches hold disjoint keys)."""
    if options.workers <= 1:
        with psycopg.connect(settings.postgres_dsn) as conn:
            return apply_repair(conn, plan, run_id, audit_detail=options.audit_detail)
    from psycopg_pool import ConnectionPool

    with ConnectionPool(
        settings.postgres_dsn, min_size=options.workers, max_size=options.workers, open=True
    ) as pool:
        return apply_repair(
            pool, plan, run_id, audit_detail=options.audit_detail, workers=options.workers
        )


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
) -> SliceRepair:
    """Verify the slice's candidates again, plan the repair, write its SQL; apply on request."""
    verification = verify_slice(config, table, slice_key, settings, scratch)
    run_id = new_run_id()
    plan = plan_verified_repair(config, table, verification, run_id)
    sql_path = table_scratch(scratch, table) / "slices" / f"slice={slice_key}.repair-{run_id}.sql"
    sql_path.write_text(plan.sql_script())
    outcome = None
    if apply and (plan.upsert_count or plan.delete_count):
        with psycopg.connect(settings.postgres_dsn) as conn:
            outcome = apply_repair(conn, plan, run_id)
    return SliceRepair(verification, plan, sql_path, outcome)


def summarize(report: ReconcileReport, verification: VerificationResult) -> None:
    """Counts by confirmed kind, plus what the re-read resolved or found in flight."""
    kinds = [c.kind.value for c in verification.confirmed]
    report.missing = kinds.count("missing")
    report.extra = kinds.count("extra")
    report.mismatched = kinds.count("mismatched")
    report.in_flight = len(verification.in_flight)
    report.resolved = len(verification.resolved)
    catch_up = verification.catch_up
    report.verification = catch_up.detail if catch_up is not None else "no candidates"


def write_confirmed(path: Path, verification: VerificationResult) -> Path:
    """Every confirmed discrepancy (key, kind, target version) in one Parquet file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": pa.array([json.dumps(list(c.key), default=str) for c in verification.confirmed]),
            "kind": pa.array([c.kind.value for c in verification.confirmed], pa.string()),
            "source_version": pa.array(
                [c.source.version if c.source else None for c in verification.confirmed],
                pa.int64(),
            ),
            "target_version": pa.array(
                [c.target_version for c in verification.confirmed], pa.int64()
            ),
        }
    )
    pq.write_table(table, path)
    return path


def _scan_slice_rows(
    config_json: str, source: str, slice_key: str, settings: ConnectionSettings
) -> int:
    """Rows of one slice as read by the source reader (the scan alone, for benchmarks)."""
    from cdc_pipelines.scylla.reader import read_slice
    from cdc_pipelines.scylla.session import cql_session
    from cdc_pipelines.scylla.slices import slice_by_id

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
