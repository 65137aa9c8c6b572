"""Reconciliation of a real replicated table: streamed through Connect, drifted on purpose.

The table has every CQL type, a composite partition key, a reserved-word clustering
key and a mixed-case column. After the sink applies the stream, the diff must be
empty; after injected drift it must report exactly that drift.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.audit import AuditTables
from cdc_pipelines.reconcile import diff_step, verify_step
from cdc_pipelines.reconcile.table_run import ReconcileOptions, run_reconciliation
from cdc_pipelines.replicated_table import resolve_spec
from cdc_pipelines.scylla.emulated_source import now_us
from cdc_pipelines_tests.e2e.conftest import ROWS
from cdc_pipelines_tests.e2e.test_streaming_path import row

APPLY_TIMEOUT_S = 120


def options(tmp_path: Path, *, repair: bool = False) -> ReconcileOptions:
    return ReconcileOptions(scratch=tmp_path, workers=1, settle_seconds=0, repair=repair)


def test_a_faithful_replica_reconciles_clean(replicated, settings, tmp_path):
    config, table, _, _ = replicated
    report = run_reconciliation(resolve_spec(config, table), settings, options(tmp_path))
    assert (report.source_rows, report.target_rows) == (ROWS, ROWS)
    assert (report.missing, report.extra, report.mismatched) == (0, 0, 0), report.slices


def test_injected_drift_is_reported_exactly(replicated, settings, tmp_path, postgres_dsn):
    config, table, source, rows = replicated
    schema = sql.Identifier(table.target_schema)

    def key_filter(r: dict[str, object]) -> sql.Composed:
        return sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Literal(r[k]))
            for k in table.primary_key
        )

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for r in rows[:3]:  # missing in the target
            conn.execute(sql.SQL("DELETE FROM {}.all_types WHERE ").format(schema) + key_filter(r))
        changes = {
            # column, new target value (as SQL literal), counted as a mismatch?
            10: ("c_text", sql.Literal(None), True),  # NULL vs empty string
            11: ("c_float", sql.Literal(11 / 8 + 0.00001), False),  # within float_abs 0.0001
            12: ("c_float", sql.Literal(12 / 8 + 0.5), True),  # beyond the tolerance
            13: (
                "c_timestamp",
                sql.Literal(dt.datetime(2024, 2, 29, 23, 59, 59, 123400, tzinfo=dt.UTC)),
                False,
            ),  # below ms
            14: (
                "c_timestamp",
                sql.Literal(dt.datetime(2024, 2, 29, 23, 59, 59, 125000, tzinfo=dt.UTC)),
                True,
            ),  # above ms
            15: ("c_decimal", sql.Literal(Decimal("12345678901234567890.000124")), True),
            16: ("Mixed Case", sql.Literal("changed"), True),
        }
        for index, (column, value, _) in changes.items():
            conn.execute(
                sql.SQL("UPDATE {}.all_types SET {} = ").format(schema, sql.Identifier(column))
                + value
                + sql.SQL(" WHERE ")
                + key_filter(rows[index])
            )
    # Extra rows: in the target only (the source never had them; written silently there).
    extra = [row(ROWS + i, region="eu-west") for i in range(2)]
    source.upsert(extra, now_us(), silent=True)
    source.delete([{k: r[k] for k in table.primary_key} for r in extra], now_us() + 10, silent=True)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for r in extra:
            conn.execute(
                sql.SQL(
                    'INSERT INTO {}.all_types (id, region, "order", _cdc_version_us) '
                    "VALUES (%s, %s, %s, 1)"
                ).format(schema),
                (r["id"], r["region"], r["order"]),
            )

    report = run_reconciliation(resolve_spec(config, table), settings, options(tmp_path))
    expected_mismatches = sum(1 for *_, counted in changes.values() if counted)
    assert report.source_rows == ROWS
    assert report.target_rows == ROWS - 3 + 2
    assert (report.missing, report.extra, report.mismatched) == (3, 2, expected_mismatches)
    recorded = pq.read_table(str(report.discrepancies_path))  # appended slice by slice
    assert sorted(recorded.column("kind").to_pylist()) == sorted(
        ["missing"] * 3 + ["extra"] * 2 + ["mismatched"] * expected_mismatches
    )


def drift_target(dsn: str, table: TableSpec, *statements: str) -> None:
    """Run statements on the target, ``{}`` standing for its schema (the sink never sees them)."""
    schema = sql.Identifier(table.target_schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(sql.SQL(statement).format(schema))


def test_repair_makes_the_tables_equal_and_a_second_run_reports_zero(
    replicated, settings, tmp_path, postgres_dsn
):
    config, table, _source, _rows = replicated
    drift_target(
        postgres_dsn,
        table,
        "DELETE FROM {}.all_types WHERE id < 4",
        "UPDATE {}.all_types SET c_map = NULL WHERE id = 20",
        'INSERT INTO {}.all_types (id, region, "order", _cdc_version_us) '
        "VALUES (9999, 'eu-west', 1, 1)",
    )
    dry = run_reconciliation(resolve_spec(config, table), settings, options(tmp_path))
    assert (dry.missing, dry.extra, dry.mismatched) == (4, 1, 1)
    assert dry.remaining == 6 and dry.repaired == {"upserted": 0, "deleted": 0}
    script = Path(str(dry.dry_run_sql_path)).read_text()
    assert script.count("INSERT INTO") >= 1 and "DELETE FROM" in script and "COMMIT;" in script

    repaired = run_reconciliation(
        resolve_spec(config, table), settings, options(tmp_path, repair=True)
    )
    assert repaired.repaired == {"upserted": 5, "deleted": 1}
    assert repaired.remaining == 0

    again = run_reconciliation(resolve_spec(config, table), settings, options(tmp_path))
    assert (again.missing, again.extra, again.mismatched, again.remaining) == (0, 0, 0, 0)
    assert again.target_rows == ROWS


def test_the_reconcile_command_reports_json_and_exits_by_outcome(
    replicated, tmp_path, postgres_dsn, unique_name
):
    import json
    import subprocess
    import sys

    from cdc_pipelines_tests.declarations import all_types_yaml

    _config, table, _, _ = replicated
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(all_types_yaml(unique_name))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {}.all_types WHERE id = 7").format(sql.Identifier(unique_name))
        )
    base = [sys.executable, "-m", "cdc_pipelines.cli", "reconcile", table.source]
    base += ["--config", str(declaration), "--scratch", str(tmp_path / "scratch"), "--workers", "1"]
    report_path = tmp_path / "report.json"
    dry = subprocess.run([*base, "--report", str(report_path)], capture_output=True, text=True)
    assert dry.returncode == 1, dry.stderr
    report = json.loads(report_path.read_text())
    for field in (
        "table",
        "source_rows",
        "target_rows",
        "missing",
        "extra",
        "mismatched",
        "in_flight",
        "repaired",
        "duration_s",
        "discrepancies_path",
    ):
        assert field in report
    assert (report["missing"], report["repaired"]) == (1, {"upserted": 0, "deleted": 0})
    assert "slice" in dry.stderr  # progress per slice

    fixed = subprocess.run(
        [*base, "--repair", "--audit", "exceptions", "--workers", "2"],
        capture_output=True,
        text=True,
    )
    assert fixed.returncode == 0, fixed.stderr
    repaired = json.loads(fixed.stdout)
    assert repaired["repaired"]["upserted"] == 1
    with psycopg.connect(postgres_dsn) as conn:
        audit = AuditTables()
        actions = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(audit.actions),
            (repaired["run_id"],),
        ).fetchone()
        upserted = conn.execute(
            sql.SQL("SELECT sum(upserted) FROM {} WHERE run_id = %s").format(audit.batches),
            (repaired["run_id"],),
        ).fetchone()
    assert actions == (0,) and upserted == (1,)  # upserts counted per batch, not per key

    unknown = subprocess.run(
        [*base[:4], "nope.table", "--config", str(declaration)], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "nope.table" in unknown.stderr
    for bad in ("0", "-3"):
        refused = subprocess.run([*base, "--slices", bad], capture_output=True, text=True)
        assert refused.returncode == 2 and f"--slices {bad}" in refused.stderr, refused.stderr


def test_a_row_repair_cannot_write_stops_the_run_before_any_slice_is_repaired(
    replicated, settings, tmp_path, postgres_dsn
):
    """Every slice is planned before any is applied: no partial repair on a bad row."""
    config, table, source, _rows = replicated
    schema = sql.Identifier(table.target_schema)
    drift_target(postgres_dsn, table, "DELETE FROM {}.all_types WHERE id < 12")
    # NaN inside a tuple has no jsonb form: repair refuses that row at plan time.
    source.upsert([row(40, c_tuple=(1, "two", float("nan")))], now_us(), silent=True)

    with pytest.raises(ReconcileError, match=r"key \(id=40.*column .c_tuple.: a NaN or infinite"):
        run_reconciliation(resolve_spec(config, table), settings, options(tmp_path, repair=True))

    with psycopg.connect(postgres_dsn) as conn:
        left = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.all_types WHERE id < 12").format(schema)
        ).fetchone()
    assert left == (0,)  # the 12 missing rows, spread over the slices, were not written


def test_heavy_drift_is_verified_in_token_ordered_chunks_each_scanned_once(
    replicated, settings, tmp_path, postgres_dsn, monkeypatch
):
    """Most of each slice differs, so verification re-reads by scanning: in chunks of 7 keys
    taken in token order, each chunk scanning only the tokens it spans. The verdicts and the
    repair are those of any other re-read, and the chunks' spans never overlap."""
    config, table, _source, _rows = replicated
    spans: list[tuple[int, int]] = []
    original = verify_step.SourceRange

    def recording(session, replicated_table, ranges, **kwargs):
        spans.append((ranges[0].start, ranges[-1].end))
        return original(session, replicated_table, ranges, **kwargs)

    monkeypatch.setattr(verify_step, "VERIFY_CHUNK", 7)
    monkeypatch.setattr(verify_step, "SourceRange", recording)
    # Diffed first, as a slice is when its sample shows less drift than the whole of it.
    monkeypatch.setattr(diff_step, "DRIFT_SHARE", 2.0)
    drift_target(
        postgres_dsn,
        table,
        "DELETE FROM {}.all_types WHERE id % 3 = 0",  # 100 missing
        "UPDATE {}.all_types SET c_text = 'drifted' WHERE id % 3 = 1",  # 100 mismatched
    )
    repaired = run_reconciliation(
        resolve_spec(config, table), settings, options(tmp_path, repair=True)
    )
    assert (repaired.missing, repaired.extra, repaired.mismatched) == (100, 0, 100)
    assert repaired.repaired == {"upserted": 200, "deleted": 0}
    assert repaired.remaining == 0
    assert len(spans) >= 200 // 7  # chunk by chunk, not one scan per slice
    ordered = sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), ordered

    again = run_reconciliation(resolve_spec(config, table), settings, options(tmp_path))
    assert (again.missing, again.extra, again.mismatched, again.remaining) == (0, 0, 0, 0)
