"""The Dagster layer's only door to the reconciliation engine, and the metadata of its results.

Assets call :func:`build_target_index`, :func:`reconcile_slice` and :func:`repair_slice`;
each calls one engine function and turns its result into a small frozen summary, so
the engine can change behind these three functions without touching an asset.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.ipc as ipc

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.audit import AuditDetail, AuditTables
from cdc_pipelines.settings import ConnectionSettings

DISCREPANCY_SAMPLE_ROWS = 20
"""Rows of the discrepancy sample shown in a slice's metadata."""
CELL_TEXT_LIMIT = 120
VERIFICATION_PENDING = (
    "candidates from the hash diff; the engine's verification step (re-reading each key "
    "after the sink caught up) is not wired yet"
)


@dataclass(frozen=True)
class IndexSummary:
    """One pass over the target table, bucketed by slice."""

    table: str
    rows: int
    rows_per_slice: Mapping[str, int]
    duration_s: float
    directory: Path


@dataclass(frozen=True)
class DiscrepancySample:
    """The first rows of a slice's discrepancies, as text for display."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class SliceSummary:
    """The diff of one token slice."""

    table: str
    slice_id: str
    source_rows: int
    target_rows: int
    missing: int
    extra: int
    mismatched: int
    duration_s: float
    candidates_path: Path
    sample: DiscrepancySample
    verified: bool
    in_flight: int = 0
    resolved: int = 0
    verification_detail: str = ""

    @property
    def discrepancies(self) -> int:
        return self.missing + self.extra + self.mismatched

    @property
    def rows_per_s(self) -> float:
        return self.source_rows / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class RepairSummary:
    """A repair of one slice: the SQL it runs (dry run) or ran (applied)."""

    table: str
    slice_id: str
    applied: bool
    upserts: int
    deletes: int
    sql_script: str
    sql_path: Path | None
    run_id: str  # names the dry-run script and, when applied, the audit rows
    audit: str  # where the audit rows are, and at which detail


def build_target_index(
    config: PipelineConfig, table: TableSpec, settings: ConnectionSettings, scratch: Path
) -> IndexSummary:
    """Stream the target table once and write its per-slice index under ``scratch``."""
    from cdc_pipelines.postgres.target_index import TargetIndexManifest
    from cdc_pipelines.reconcile import engine

    started = time.monotonic()
    manifest = engine.build_index(config, table, settings, scratch)
    if not isinstance(manifest, TargetIndexManifest):
        raise ReconcileError(
            f"the engine's build_index returned {type(manifest).__name__} for {table.source}, "
            "expected a TargetIndexManifest"
        )
    return IndexSummary(
        table=table.source,
        rows=manifest.rows,
        rows_per_slice=dict(manifest.rows_per_slice),
        duration_s=round(time.monotonic() - started, 3),
        directory=engine.table_scratch(scratch, table) / "target_index",
    )


def reconcile_slice(
    config: PipelineConfig,
    table: TableSpec,
    slice_id: str,
    settings: ConnectionSettings,
    scratch: Path,
) -> SliceSummary:
    """Diff one slice of the source against the target index, then verify the candidates."""
    from cdc_pipelines.reconcile import engine

    outcome = engine.reconcile_slice(config, table, slice_id, settings, scratch)
    path = Path(outcome.candidates_path)
    verification = engine.verify_slice(config, table, slice_id, settings, scratch)
    kinds = [c.kind.value for c in verification.confirmed]
    return SliceSummary(
        table=outcome.table,
        slice_id=outcome.slice_id,
        source_rows=outcome.source_rows,
        target_rows=outcome.target_rows,
        missing=kinds.count("missing"),
        extra=kinds.count("extra"),
        mismatched=kinds.count("mismatched"),
        duration_s=outcome.duration_s,
        candidates_path=path,
        sample=read_sample(path),
        verified=True,
        in_flight=len(verification.in_flight),
        resolved=len(verification.resolved),
        verification_detail=(
            verification.catch_up.detail if verification.catch_up else "no candidates"
        ),
    )


def repair_slice(
    config: PipelineConfig,
    table: TableSpec,
    slice_id: str,
    settings: ConnectionSettings,
    scratch: Path,
    apply: bool,
    audit_detail: AuditDetail = AuditDetail.KEYS,
) -> RepairSummary:
    """Repair the verified discrepancies of one slice; a dry run only writes the SQL script."""
    from cdc_pipelines.reconcile import engine

    repair = engine.repair_slice(config, table, slice_id, settings, scratch, apply, audit_detail)
    outcome = repair.outcome
    return RepairSummary(
        table=table.source,
        slice_id=slice_id,
        applied=outcome is not None,
        upserts=outcome.upserted if outcome else repair.plan.write_count,
        deletes=outcome.deleted if outcome else repair.plan.delete_count,
        sql_script=_script_excerpt(repair.plan.sql_script()),
        sql_path=repair.sql_path,
        run_id=repair.plan.run_id,
        audit=f"{AuditTables().schema}.repair_actions ({audit_detail.value})",
    )


SCRIPT_EXCERPT_LINES = 200


def _script_excerpt(script: str) -> str:
    """The dry-run script for the UI, cut after ``SCRIPT_EXCERPT_LINES`` lines (the file has all)."""
    lines = script.splitlines()
    if len(lines) <= SCRIPT_EXCERPT_LINES:
        return script
    cut = len(lines) - SCRIPT_EXCERPT_LINES
    return "\n".join([*lines[:SCRIPT_EXCERPT_LINES], f"-- … {cut} more lines in the script file"])


def read_sample(path: Path, limit: int = DISCREPANCY_SAMPLE_ROWS) -> DiscrepancySample:
    """The first ``limit`` discrepancy candidates of an Arrow IPC file, as text."""
    if not path.exists():
        return DiscrepancySample((), ())
    with pa.OSFile(str(path), "rb") as source:
        reader = ipc.open_file(source)
        batches = []
        rows = 0
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            batches.append(batch)
            rows += batch.num_rows
            if rows >= limit:
                break
        schema = reader.schema
    head = pa.Table.from_batches(batches, schema=schema).slice(0, limit)
    columns = tuple(head.column_names)
    records = head.to_pylist()
    return DiscrepancySample(
        columns,
        tuple(tuple(_cell(record[c]) for c in columns) for record in records),
    )


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        text = value.hex()
    elif isinstance(value, list):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text[:CELL_TEXT_LIMIT]


def index_metadata(summary: IndexSummary) -> dict[str, dg.MetadataValue]:
    return {
        "rows": dg.MetadataValue.int(summary.rows),
        "duration_s": dg.MetadataValue.float(summary.duration_s),
        "rows_per_s": dg.MetadataValue.float(
            round(summary.rows / summary.duration_s, 1) if summary.duration_s > 0 else 0.0
        ),
        "rows_per_slice": dg.MetadataValue.json(dict(summary.rows_per_slice)),
        "index_directory": dg.MetadataValue.path(str(summary.directory)),
    }


def slice_metadata(summary: SliceSummary) -> dict[str, dg.MetadataValue]:
    sample = summary.sample
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord(dict(zip(sample.columns, row, strict=True))) for row in sample.rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in sample.columns]),
    )
    return {
        "source_rows": dg.MetadataValue.int(summary.source_rows),
        "target_rows": dg.MetadataValue.int(summary.target_rows),
        "missing": dg.MetadataValue.int(summary.missing),
        "extra": dg.MetadataValue.int(summary.extra),
        "mismatched": dg.MetadataValue.int(summary.mismatched),
        "discrepancies": dg.MetadataValue.int(summary.discrepancies),
        "duration_s": dg.MetadataValue.float(summary.duration_s),
        "rows_per_s": dg.MetadataValue.float(round(summary.rows_per_s, 1)),
        "verified": dg.MetadataValue.bool(summary.verified),
        "in_flight": dg.MetadataValue.int(summary.in_flight),
        "resolved_on_reread": dg.MetadataValue.int(summary.resolved),
        "verification": dg.MetadataValue.text(
            summary.verification_detail if summary.verified else VERIFICATION_PENDING
        ),
        "discrepancy_sample": table,
        "candidates": dg.MetadataValue.path(str(summary.candidates_path)),
    }


def repair_metadata(summary: RepairSummary) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "applied": dg.MetadataValue.bool(summary.applied),
        "upserts": dg.MetadataValue.int(summary.upserts),
        "deletes": dg.MetadataValue.int(summary.deletes),
        "sql": dg.MetadataValue.md(f"```sql\n{summary.sql_script}\n```"),
    }
    if summary.sql_path is not None:
        metadata["sql_script"] = dg.MetadataValue.path(str(summary.sql_path))
    metadata["run_id"] = dg.MetadataValue.text(summary.run_id)
    if summary.applied:
        metadata["audit"] = dg.MetadataValue.text(summary.audit)
    return metadata
