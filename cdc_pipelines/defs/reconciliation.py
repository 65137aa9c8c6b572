"""The Dagster layer's door to the reconciliation steps, and the metadata of their results.

Assets call the steps of :mod:`cdc_pipelines.reconcile` through the three functions here
and show the steps' own result types; nothing is copied into Dagster-side mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.ipc as ipc

from cdc_pipelines.postgres.audit import AuditDetail, AuditTables
from cdc_pipelines.postgres.target_index import TargetIndexManifest
from cdc_pipelines.reconcile.diff_step import SliceOutcome, diff_table_slice
from cdc_pipelines.reconcile.index_step import ScanMarker, build_index
from cdc_pipelines.reconcile.repair_step import RepairSettings
from cdc_pipelines.reconcile.report import Tally
from cdc_pipelines.reconcile.scratch import ScratchLayout
from cdc_pipelines.reconcile.slice_repair import SliceRepair, verify_slice
from cdc_pipelines.reconcile.slice_repair import repair_slice as repair_slice_step
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.settings import ConnectionSettings

DISCREPANCY_SAMPLE_ROWS = 20
"""Rows of the discrepancy sample shown in a slice's metadata."""
CELL_TEXT_LIMIT = 120
SLICE_CHECK = "slice_in_sync"
"""The reconciliation asset's check, evaluated per slice in the step that reconciles it."""
SLICE_CHECK_SEVERITY = dg.AssetCheckSeverity.WARN
"""A slice that disagrees warns: the check shows *where* PostgreSQL disagrees (which partition
to repair). How bad it is for the table as a whole is the call of the ``discrepancy_rate``
check on the PostgreSQL asset, which fails with ERROR on confirmed discrepancies, so alerting
on ERROR is decided in one place and not once per slice."""


@dataclass(frozen=True)
class DiscrepancySample:
    """The first rows of a slice's discrepancies, as text for display."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class SliceVerdict:
    """One slice as Dagster shows it: the hash diff, then the verdicts after the re-read."""

    outcome: SliceOutcome
    tally: Tally
    verification: str  # how the sink's catch-up was established
    sample: DiscrepancySample
    catch_up_confirmed: bool = True  # the sink's offsets were seen past the scan's end offsets

    @property
    def unsure(self) -> bool:
        """The catch-up was not confirmed and some verdict may be a row still in flight (ADR 0009)."""
        return not self.catch_up_confirmed and (self.tally.confirmed + self.tally.in_flight) > 0

    @property
    def in_sync(self) -> bool:
        """No key differs after the re-read (target-ahead rows included) and no verdict is unsure."""
        return self.tally.disagreeing == 0 and not self.unsure


def build_target_index(
    table: ReplicatedTable, settings: ConnectionSettings, scratch: Path
) -> TargetIndexManifest:
    """Stream the target table once and write its per-slice index under ``scratch``."""
    return build_index(table, settings, ScratchLayout(scratch, table.source))


def reconcile_slice(
    table: ReplicatedTable, slice_id: str, settings: ConnectionSettings, scratch: Path
) -> SliceVerdict:
    """Diff one slice of the source against the target index, then verify the candidates."""
    layout = ScratchLayout(scratch, table.source)
    outcome = diff_table_slice(table, slice_id, settings, layout)
    verification = verify_slice(table, slice_id, settings, layout)
    if outcome.whole:  # loaded whole: the counts are its scan's, known only now
        outcome = SliceOutcome.read(layout.slice_result(slice_id))
    return SliceVerdict(
        outcome=outcome,
        tally=verification.tally,
        verification=verification.detail,
        sample=read_sample(Path(outcome.candidates_path)),
        catch_up_confirmed=verification.catch_up_confirmed,
    )


def repair_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    scratch: Path,
    apply: bool,
    audit_detail: AuditDetail = AuditDetail.KEYS,
    allow_unconfirmed: bool = False,
) -> SliceRepair:
    """Repair the verified discrepancies of one slice; a dry run only writes the SQL script.

    An applied repair is refused (``SliceRepair.refused`` says why, nothing is written) when
    the sink's catch-up could not be confirmed, unless ``allow_unconfirmed``.
    """
    layout = ScratchLayout(scratch, table.source)
    return repair_slice_step(
        table,
        slice_id,
        settings,
        layout,
        apply,
        RepairSettings(audit_detail=audit_detail, allow_unconfirmed=allow_unconfirmed),
    )


SCRIPT_EXCERPT_LINES = 200


def _script_excerpt(path: Path) -> str:
    """The dry-run script for the UI, cut after ``SCRIPT_EXCERPT_LINES`` lines (the file has all)."""
    lines: list[str] = []
    more = 0
    with path.open(encoding="utf-8") as script:
        for line in script:
            if len(lines) < SCRIPT_EXCERPT_LINES:
                lines.append(line.rstrip("\n"))
            else:
                more += 1
    if more:
        lines.append(f"-- … {more} more lines in the script file")
    return "\n".join(lines)


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


def index_metadata(
    manifest: TargetIndexManifest, directory: Path, scan: ScanMarker
) -> dict[str, dg.MetadataValue]:
    """The index's size and speed, and the scan marker verification will wait on."""
    duration = manifest.duration_s
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(manifest.rows),
        "duration_s": dg.MetadataValue.float(duration),
        "rows_per_s": dg.MetadataValue.float(
            round(manifest.rows / duration, 1) if duration > 0 else 0.0
        ),
        "rows_per_slice": dg.MetadataValue.json(dict(manifest.rows_per_slice)),
        "index_directory": dg.MetadataValue.path(str(directory)),
        "scan_cutoff": dg.MetadataValue.timestamp(scan.cutoff_us / 1_000_000),
    }
    if scan.end_offsets is not None:
        metadata["topic_end_offsets"] = dg.MetadataValue.json(
            {str(partition): offset for partition, offset in sorted(scan.end_offsets.items())}
        )
    else:
        # Verification will wait a settle window instead of the sink's offsets: say why.
        metadata["topic_end_offsets_unknown"] = dg.MetadataValue.text(
            scan.kafka_error or "not recorded"
        )
    return metadata


def slice_metadata(verdict: SliceVerdict) -> dict[str, dg.MetadataValue]:
    sample, outcome, tally = verdict.sample, verdict.outcome, verdict.tally
    table = dg.MetadataValue.table(
        records=[
            dg.TableRecord(dict(zip(sample.columns, row, strict=True))) for row in sample.rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in sample.columns]),
    )
    return {
        # First, so a partition's page says at once whether the slice agrees (Dagster's
        # partition list colours materializations only; the slice_in_sync check has the rest).
        "in_sync": dg.MetadataValue.bool(verdict.in_sync),
        "token_range": dg.MetadataValue.text(outcome.token_range),
        "source_rows": dg.MetadataValue.int(outcome.source_rows),
        "target_rows": dg.MetadataValue.int(outcome.target_rows),
        "missing": dg.MetadataValue.int(tally.missing),
        "extra": dg.MetadataValue.int(tally.extra),
        "mismatched": dg.MetadataValue.int(tally.mismatched),
        # Different with the target's version ahead: reported, never overwritten (ADR 0009).
        "target_ahead": dg.MetadataValue.int(tally.target_ahead),
        "discrepancies": dg.MetadataValue.int(tally.confirmed),
        "in_flight": dg.MetadataValue.int(tally.in_flight),
        "catch_up_confirmed": dg.MetadataValue.bool(verdict.catch_up_confirmed),
        "verdicts_unsure": dg.MetadataValue.bool(verdict.unsure),
        "verification": dg.MetadataValue.text(verdict.verification),
        "duration_s": dg.MetadataValue.float(outcome.duration_s),
        "rows_per_s": dg.MetadataValue.float(round(outcome.rows_per_s, 1)),
        "verified": dg.MetadataValue.bool(True),
        "resolved_on_reread": dg.MetadataValue.int(tally.resolved),
        "discrepancy_sample": table,
        "candidates": dg.MetadataValue.path(outcome.candidates_path),
    }


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def slice_check_result(verdict: SliceVerdict) -> dg.AssetCheckResult:
    """The slice's :data:`SLICE_CHECK`: passes when no key differs after the re-read and no
    verdict is unsure; rows changed during the scan (in flight) do not fail it when the sink's
    catch-up was confirmed."""
    outcome, tally = verdict.outcome, verdict.tally
    metadata: dict[str, dg.MetadataValue] = {
        "token_range": dg.MetadataValue.text(outcome.token_range),
        "source_rows": dg.MetadataValue.int(outcome.source_rows),
        "target_rows": dg.MetadataValue.int(outcome.target_rows),
        "discrepancies": dg.MetadataValue.int(tally.confirmed),
        "missing": dg.MetadataValue.int(tally.missing),
        "extra": dg.MetadataValue.int(tally.extra),
        "mismatched": dg.MetadataValue.int(tally.mismatched),
        "target_ahead": dg.MetadataValue.int(tally.target_ahead),
        "in_flight": dg.MetadataValue.int(tally.in_flight),
        "catch_up_confirmed": dg.MetadataValue.bool(verdict.catch_up_confirmed),
        "verification": dg.MetadataValue.text(verdict.verification),
    }
    if verdict.in_sync:
        in_flight = f"; {tally.in_flight} changed during the scan" if tally.in_flight else ""
        return dg.AssetCheckResult(
            check_name=SLICE_CHECK,
            passed=True,
            description=(
                f"ScyllaDB ({_rows(outcome.source_rows)}) and PostgreSQL "
                f"({_rows(outcome.target_rows)}) agree on tokens {outcome.token_range}{in_flight}"
            ),
            metadata=metadata,
        )
    parts = []
    if tally.confirmed:
        parts.append(
            f"{tally.confirmed} discrepanc{'y' if tally.confirmed == 1 else 'ies'} in tokens "
            f"{outcome.token_range}: {tally.missing} missing, {tally.extra} extra, "
            f"{tally.mismatched} mismatched in PostgreSQL; the repair of this partition fixes them"
        )
    if tally.target_ahead:
        parts.append(
            f"{_rows(tally.target_ahead)} of PostgreSQL ahead of the source in tokens "
            f"{outcome.token_range} (a hand edit or another writer): repair never overwrites "
            "them, a person must look"
        )
    if verdict.unsure:
        parts.append(
            "unsure: the sink's catch-up was not confirmed, so rows still in flight may be "
            f"counted ({verdict.verification}); repair refuses unless allow_unconfirmed"
        )
    return dg.AssetCheckResult(
        check_name=SLICE_CHECK,
        passed=False,
        severity=SLICE_CHECK_SEVERITY,
        description="; ".join(parts),
        metadata=metadata,
    )


def repair_result(repair: SliceRepair) -> str:
    """One line saying what the repair did, first in its metadata: applied, dry run or refused."""
    outcome, planned = repair.outcome, repair.planned
    if repair.refused is not None:
        return f"REFUSED, nothing was applied ({planned} change(s) planned): {repair.refused}"
    if outcome is not None:
        return f"applied: {outcome.upserted} upserted, {outcome.deleted} deleted"
    if not planned:
        return "nothing to repair: no verified discrepancy in this slice"
    return (
        f"dry run, nothing was applied: {planned} change(s) planned in the SQL script; "
        "run with config apply: true to change PostgreSQL"
    )


def repair_metadata(repair: SliceRepair, audit_detail: AuditDetail) -> dict[str, dg.MetadataValue]:
    """What a slice's repair did. ``result`` comes first and says whether anything was applied;
    ``upserts``/``deletes`` are the plan, ``upserted``/``deleted`` what reached PostgreSQL."""
    outcome, verification = repair.outcome, repair.verification
    metadata: dict[str, dg.MetadataValue] = {
        "result": dg.MetadataValue.text(repair_result(repair)),
        "applied": dg.MetadataValue.bool(outcome is not None),
    }
    if repair.refused is not None:
        metadata["refused"] = dg.MetadataValue.text(repair.refused)
    metadata.update(
        {
            "upserts": dg.MetadataValue.int(repair.writes),
            "deletes": dg.MetadataValue.int(repair.deletes),
            "upserted": dg.MetadataValue.int(outcome.upserted if outcome else 0),
            "deleted": dg.MetadataValue.int(outcome.deleted if outcome else 0),
            "target_ahead": dg.MetadataValue.int(verification.tally.target_ahead),
            "catch_up_confirmed": dg.MetadataValue.bool(verification.catch_up_confirmed),
            "verification": dg.MetadataValue.text(verification.detail),
            "sql": dg.MetadataValue.md(f"```sql\n{_script_excerpt(repair.sql_path)}\n```"),
            "sql_script": dg.MetadataValue.path(str(repair.sql_path)),
            "run_id": dg.MetadataValue.text(repair.run_id),
        }
    )
    if outcome is not None:
        metadata["skipped_newer"] = dg.MetadataValue.int(outcome.skipped_newer)
        metadata["undone_after_source_delete"] = dg.MetadataValue.int(repair.undone)
        metadata["audit"] = dg.MetadataValue.text(
            f"{AuditTables().schema}.repair_actions ({audit_detail.value})"
        )
    return metadata
