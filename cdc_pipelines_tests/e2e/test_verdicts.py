"""Verdicts that can be trusted, on a table replicated through the real streaming path.

A reconciliation must never end clean while the target is wrong: a target row ahead of the
source is reported on every run, an unconfirmed catch-up repairs nothing, a key the source
deletes during repair stays deleted, and a repair that stops part-way says what it committed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from cdc_pipelines.postgres.repair import new_run_id
from cdc_pipelines.reconcile import diff_step, verify, verify_step
from cdc_pipelines.reconcile.diff_step import diff_table_slice
from cdc_pipelines.reconcile.index_step import ScanMarker, build_index
from cdc_pipelines.reconcile.repair_step import Repairer, repair_verified
from cdc_pipelines.reconcile.scratch import ScratchLayout, read_candidates
from cdc_pipelines.reconcile.slice_repair import (
    SliceJob,
    apply_slice,
    repair_slice,
    verify_and_plan_slice,
)
from cdc_pipelines.reconcile.table_run import (
    ReconcileOptions,
    RepairInterrupted,
    run_reconciliation,
)
from cdc_pipelines.reconcile.verify_step import CandidateVerifier, CatchUpWait
from cdc_pipelines.replicated_table import resolve_spec
from cdc_pipelines.ring.slices import slice_by_id, slice_ids
from cdc_pipelines.scylla.emulated_source import now_us
from cdc_pipelines_tests.declarations import all_types_yaml
from cdc_pipelines_tests.e2e.conftest import ROWS
from cdc_pipelines_tests.e2e.test_streaming_path import row

UNREACHABLE_KAFKA = "127.0.0.1:1"
REGIONS = ("eu-west", "us-east", "ap-south")  # as the `replicated` fixture writes them
MAX_STDERR_LINES = 15  # progress and one line per finding; librdkafka must not flood it


def options(tmp_path: Path, **changes: object) -> ReconcileOptions:
    base = ReconcileOptions(scratch=tmp_path, workers=1, settle_seconds=0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run_sql(dsn: str, schema: str, statement: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(s=sql.Identifier(schema)), params or None)


def delete_at_source(cql_session: object, keyspace: str, key: int) -> None:
    """Delete one row of the fixture's table in ScyllaDB only (no change event is streamed)."""
    cql_session.execute(  # type: ignore[attr-defined]
        f'DELETE FROM "{keyspace}".all_types WHERE id = %s AND region = %s',
        (key, REGIONS[key % len(REGIONS)]),
    )


def present(dsn: str, schema: str, ids: list[int]) -> list[int]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            sql.SQL("SELECT id FROM {}.all_types WHERE id = ANY(%s) ORDER BY id").format(
                sql.Identifier(schema)
            ),
            (ids,),
        ).fetchall()
    return [r[0] for r in found]


def test_target_rows_ahead_of_the_source_are_reported_on_every_run(
    replicated, settings, tmp_path, postgres_dsn
):
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    ahead = list(range(20, 27))
    # Changed values stamped newer than the source: hand edits, or another writer.
    run_sql(
        postgres_dsn,
        spec.target_schema,
        "UPDATE {s}.all_types SET c_text = 'edited', _cdc_version_us = _cdc_version_us + 1000 "
        "WHERE id = ANY(%s)",
        ahead,
    )
    for attempt in (options(tmp_path), options(tmp_path, repair=True), options(tmp_path)):
        report = run_reconciliation(table, settings, attempt)
        assert (report.target_ahead, report.mismatched, report.in_flight) == (7, 0, 0)
        assert report.remaining == 7 and not report.settled
    recorded = json.loads(report.to_json())
    assert recorded["target_ahead"] == 7


def test_an_unreachable_broker_repairs_nothing_and_says_so_in_one_line(
    replicated, tmp_path, postgres_dsn, unique_name
):
    _config, spec, _, _ = replicated
    run_sql(postgres_dsn, spec.target_schema, "DELETE FROM {s}.all_types WHERE id < 3")
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(all_types_yaml(unique_name))
    env = {**os.environ, "CDC_KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE_KAFKA}
    command = [sys.executable, "-m", "cdc_pipelines.cli", "reconcile", spec.source]
    command += ["--config", str(declaration), "--scratch", str(tmp_path), "--workers", "1"]
    command += ["--settle-seconds", "0", "--report", str(tmp_path / "report.json")]
    refused = subprocess.run([*command, "--repair"], capture_output=True, text=True, env=env)

    assert refused.returncode == 1, refused.stderr
    assert len(refused.stderr.splitlines()) <= MAX_STDERR_LINES, refused.stderr
    assert "not repaired: the sink's catch-up is unconfirmed" in refused.stderr
    assert UNREACHABLE_KAFKA in refused.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["missing"] == 3 and report["repaired"] == {"upserted": 0, "deleted": 0}
    assert report["catch_up_confirmed"] is False
    assert present(postgres_dsn, spec.target_schema, [0, 1, 2]) == []

    forced = subprocess.run(
        [*command, "--repair-unconfirmed"], capture_output=True, text=True, env=env
    )
    assert forced.returncode == 1, forced.stderr  # repaired, but the verdicts stay unsure
    assert json.loads((tmp_path / "report.json").read_text())["repaired"]["upserted"] == 3
    assert present(postgres_dsn, spec.target_schema, [0, 1, 2]) == [0, 1, 2]


def test_a_sink_that_does_not_catch_up_blocks_repair_until_asked(
    replicated, settings, tmp_path, postgres_dsn
):
    config, spec, source, _ = replicated
    table = resolve_spec(config, spec)
    run_sql(postgres_dsn, spec.target_schema, "DELETE FROM {s}.all_types WHERE id < 3")
    # The fixture's sink is gone, so this change stays in the topic: the group never passes it.
    source.upsert([row(10_000)], now_us())
    source.flush()
    stalled = options(tmp_path, repair=True, verify_timeout_s=2.0)
    report = run_reconciliation(table, settings, stalled)
    assert not report.catch_up_confirmed and "still behind" in report.verification
    assert report.repair_refused and report.repaired == {"upserted": 0, "deleted": 0}
    assert not report.settled

    forced = run_reconciliation(
        table, settings, dataclasses.replace(stalled, repair_unconfirmed=True)
    )
    assert forced.repaired["upserted"] >= 3
    assert present(postgres_dsn, spec.target_schema, [0, 1, 2]) == [0, 1, 2]


def test_a_key_deleted_at_the_source_between_verification_and_repair_stays_deleted(
    replicated, settings, tmp_path, postgres_dsn, cql_session
):
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    gone = [40, 41, 42]
    run_sql(postgres_dsn, spec.target_schema, "DELETE FROM {s}.all_types WHERE id = ANY(%s)", gone)
    layout = ScratchLayout(tmp_path, table.source)
    build_index(table, settings, layout)
    with CandidateVerifier(table, settings, ScanMarker.read(layout), CatchUpWait(0)) as verifier:
        for slice_id in slice_ids(table.slices):
            diff_table_slice(table, slice_id, settings, layout)
        verifications = [
            verifier.verify([read_candidates(layout.candidates(s))])
            for s in slice_ids(table.slices)
        ]
        assert sorted(c.key[0] for v in verifications for c in v.confirmed) == gone
        # The seam: the source deletes the keys after they were verified missing (the sink,
        # had it run, would find nothing to delete in the target).
        for key in gone:
            delete_at_source(cql_session, spec.keyspace, key)
        undone = 0
        with Repairer(settings.postgres_dsn, "race-test") as repairer:
            for verification in verifications:
                done = repair_verified(table, verification, repairer, verifier.source_presence())
                undone += done.undone if done else 0
    assert undone == len(gone)
    assert present(postgres_dsn, spec.target_schema, gone) == []


@pytest.mark.parametrize(
    ("streamed", "read_level"),
    [(True, "LOCAL_QUORUM"), (False, "LOCAL_QUORUM"), (False, "ONE")],
    ids=["delete-streamed", "stream-quiet", "stream-quiet-reads-at-ONE"],
)
def test_a_slice_apply_checks_the_source_again_only_when_the_topic_moved(
    replicated, settings, tmp_path, postgres_dsn, streamed, read_level, caplog
):
    """After a chunk commits, keys the source deleted meanwhile are taken back, unless the
    table's topic gained nothing since the slice was read (and the slice's reads were as
    sure as the delete consistency): then no delete can have reached the sink, and the one
    still to stream will remove the row (here it is never published, so the row stays: the
    check was skipped)."""
    config, spec, source, _ = replicated
    table = resolve_spec(config, spec)
    table = dataclasses.replace(
        table, scylla=table.scylla.model_copy(update={"consistency": read_level})
    )
    skipped = not streamed and read_level != "ONE"
    run_sql(postgres_dsn, spec.target_schema, "DELETE FROM {s}.all_types WHERE id < 60")
    layout = ScratchLayout(tmp_path, table.source)
    build_index(table, settings, layout)
    outcomes = [diff_table_slice(table, s, settings, layout) for s in slice_ids(table.slices)]
    busiest = max(outcomes, key=lambda o: o.missing)
    run_id = new_run_id()
    with CandidateVerifier(table, settings, ScanMarker.read(layout), CatchUpWait(0)) as verifier:
        verifier.wait_for_sink()
        job = SliceJob(
            table,
            settings,
            verifier.scan,
            verifier.wait,
            verifier.catch_up,
            busiest,
            layout,
            run_id,
            repairing=True,
        )
        planned = verify_and_plan_slice(job)
        assert (planned.stream_mark is not None) is (read_level != "ONE")
        assert planned.writes == busiest.missing
        written = sorted(key for path in planned.plans for key, _ in _written(path))[:2]
        keys = [int(key[0]) for key in written]  # type: ignore[call-overload]
        source.delete(
            [dict(zip(spec.primary_key, key, strict=True)) for key in written], silent=not streamed
        )
        source.flush()
        presence = verifier.source_presence(
            slice_by_id(busiest.slice_id, table.slices), busiest.source_rows
        )
        caplog.set_level(logging.INFO, logger="cdc_pipelines.reconcile.slice_repair")
        with Repairer(settings.postgres_dsn, run_id) as repairer:
            undone = apply_slice(table, planned, repairer, verifier, presence)
    assert ("was skipped for" in caplog.text) is skipped
    if skipped:
        assert undone == 0 and present(postgres_dsn, spec.target_schema, keys) == keys
    else:
        assert undone == len(keys) and present(postgres_dsn, spec.target_schema, keys) == []


def test_a_slice_with_much_drift_is_diffed_in_its_one_scan_with_the_verdicts_of_a_diff(
    replicated, settings, tmp_path, postgres_dsn, cql_session, monkeypatch
):
    """A slice whose sample has candidates for a large share of its rows is read once, after
    the sink's catch-up, each chunk diffed against the target index as it is read: the
    verdicts are those of a diff and its re-read, and the repair leaves nothing to find."""
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    schema = spec.target_schema
    monkeypatch.setattr(diff_step, "LOAD_SAMPLE_PARTS", 1)  # sample whole slices: sure shares
    monkeypatch.setattr(diff_step, "DRIFT_SAMPLE_ROWS", 1)  # of their few rows
    monkeypatch.setattr(verify_step, "DIFF_IN_SCAN_CHUNK", 16)  # several chunks a slice
    run_sql(postgres_dsn, schema, "DELETE FROM {s}.all_types WHERE id % 4 = 0")
    run_sql(postgres_dsn, schema, "UPDATE {s}.all_types SET c_text = 'edited' WHERE id % 4 = 1")
    delete_at_source(cql_session, spec.keyspace, 6)  # left only in the target: extra

    def verdicts(report: object) -> list[tuple[str, str]]:
        found = pq.read_table(report.discrepancies_path)  # type: ignore[attr-defined]
        return sorted(zip(found["key"].to_pylist(), found["kind"].to_pylist(), strict=True))

    counted = ("source_rows", "target_rows", "missing", "mismatched", "extra", "resolved")
    scanned = run_reconciliation(table, settings, options(tmp_path / "scan"))
    assert all(s["diff_in_scan"] for s in scanned.slices)
    with monkeypatch.context() as diffing:
        diffing.setattr(diff_step, "DRIFT_SHARE", 2.0)  # no slice goes there: diffed first
        diffed = run_reconciliation(table, settings, options(tmp_path / "diff"))
    assert not any(s["whole"] for s in diffed.slices)
    assert [getattr(scanned, c) for c in counted] == [getattr(diffed, c) for c in counted]
    assert (scanned.missing, scanned.mismatched, scanned.extra) == (ROWS // 4, ROWS // 4, 1)
    assert verdicts(scanned) == verdicts(diffed)
    assert [s["mismatched"] for s in scanned.slices] == [s["mismatched"] for s in diffed.slices]

    repaired = run_reconciliation(table, settings, options(tmp_path / "repair", repair=True))
    assert all(s["diff_in_scan"] for s in repaired.slices)
    assert repaired.repaired == {"upserted": ROWS // 2, "deleted": 1}
    assert repaired.remaining == 0
    again = run_reconciliation(table, settings, options(tmp_path / "again"))
    assert (again.missing, again.mismatched, again.extra) == (0, 0, 0)
    assert not any(s["whole"] for s in again.slices)  # no drift left: diffed as usual


def _written(path: Path) -> list[tuple[tuple[object, ...], int]]:
    return list(pickle.loads(path.read_bytes()).written)


def test_a_repair_that_stops_part_way_reports_what_it_committed_and_a_rerun_finishes(
    replicated, settings, tmp_path, postgres_dsn
):
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    schema = spec.target_schema
    missing = list(range(50, 56))
    run_sql(postgres_dsn, schema, "DELETE FROM {s}.all_types WHERE id = ANY(%s)", missing)
    run_sql(  # rows the source never had: repair deletes them, and the trigger refuses that
        postgres_dsn,
        schema,
        'INSERT INTO {s}.all_types (id, region, "order", _cdc_version_us) '
        "SELECT i, 'nowhere', 0, 1 FROM generate_series(90000, 90002) AS i",
    )
    run_sql(
        postgres_dsn,
        schema,
        "CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN RAISE EXCEPTION 'deletes refused for this test'; END$$; "
        "CREATE TRIGGER refuse BEFORE DELETE ON {s}.all_types "
        "FOR EACH ROW EXECUTE FUNCTION {s}.refuse()",
    )
    with pytest.raises(RepairInterrupted) as stopped:
        run_reconciliation(table, settings, options(tmp_path, repair=True))
    assert stopped.value.exit_code == 3
    assert "cdc-pipelines reconcile" in str(stopped.value) and "--repair" in str(stopped.value)
    partial = json.loads(stopped.value.path.read_text())
    assert partial["repair_failed"] and "deletes refused" in partial["repair_failed"]
    # The partial report counts exactly what reached the table.
    restored = present(postgres_dsn, schema, missing)
    assert partial["repaired"]["upserted"] == len(restored)

    run_sql(postgres_dsn, schema, "DROP TRIGGER refuse ON {s}.all_types")
    finished = run_reconciliation(table, settings, options(tmp_path, repair=True))
    assert finished.settled and finished.extra == 3
    again = run_reconciliation(table, settings, options(tmp_path))
    assert again.confirmed == 0 and again.settled
    assert present(postgres_dsn, schema, missing) == missing


def test_a_slice_repair_plans_and_applies_a_chunk_at_a_time(
    replicated, settings, tmp_path, postgres_dsn, monkeypatch
):
    """Dagster's slice repair streams: every chunk of keys is verified, planned and written to
    the script on its own (one transaction each), and the applied repair settles them all."""
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    chunk = 4
    monkeypatch.setattr(verify, "VERIFY_CHUNK", chunk)
    monkeypatch.setattr(verify_step, "VERIFY_CHUNK", chunk)
    run_sql(postgres_dsn, spec.target_schema, "DELETE FROM {s}.all_types WHERE id < 60")
    layout = ScratchLayout(tmp_path, table.source)
    build_index(table, settings, layout)
    outcomes = [diff_table_slice(table, s, settings, layout) for s in slice_ids(table.slices)]
    busiest = max(outcomes, key=lambda o: o.missing)
    assert busiest.missing > chunk, "the test needs a slice of several chunks"

    dry = repair_slice(table, busiest.slice_id, settings, layout, apply=False)
    script = dry.sql_path.read_text()
    assert dry.outcome is None and dry.writes == busiest.missing
    assert script.count("BEGIN;") == -(-busiest.missing // chunk)  # one per chunk
    assert not layout.planned_chunks(dry.run_id).exists()

    applied = repair_slice(table, busiest.slice_id, settings, layout, apply=True)
    assert applied.outcome is not None and applied.outcome.upserted == busiest.missing
    assert applied.verification.tally.missing == busiest.missing
    assert not layout.planned_chunks(applied.run_id).exists()  # the checked plans are gone
    build_index(table, settings, layout)
    again = diff_table_slice(table, busiest.slice_id, settings, layout)
    assert again.candidates == 0


def test_a_slice_whose_target_lacks_most_rows_is_loaded_by_one_scan(
    replicated, settings, tmp_path, postgres_dsn, cql_session, monkeypatch
):
    """An initial load skips the diff: every source row is verified from one scan taken after
    the sink's catch-up, rows the target already holds count only where they disagree, and a
    row only the target has is found by key."""
    config, spec, _, _ = replicated
    table = resolve_spec(config, spec)
    schema = spec.target_schema
    monkeypatch.setattr(diff_step, "LOAD_SAMPLE_PARTS", 1)  # count whole slices: a sure estimate
    monkeypatch.setattr(verify_step, "VERIFY_CHUNK", 16)  # several chunks a slice
    run_sql(postgres_dsn, schema, "DELETE FROM {s}.all_types WHERE id >= 10")
    run_sql(postgres_dsn, schema, "UPDATE {s}.all_types SET c_text = 'edited' WHERE id = 3")
    delete_at_source(cql_session, spec.keyspace, 5)  # left only in the target: extra
    report = run_reconciliation(table, settings, options(tmp_path, repair=True))
    assert all(s["whole"] for s in report.slices)
    assert (report.missing, report.mismatched, report.extra) == (ROWS - 10, 1, 1)
    assert (report.resolved, report.in_flight, report.target_ahead) == (0, 0, 0)
    assert report.source_rows == ROWS - 1 == sum(s["source_rows"] for s in report.slices)
    assert report.repaired == {"upserted": ROWS - 10 + 1, "deleted": 1}
    assert report.remaining == 0

    again = run_reconciliation(table, settings, options(tmp_path))
    assert not any(s["whole"] for s in again.slices)  # a full target is diffed again
    assert (again.missing, again.mismatched, again.extra, again.source_rows) == (0, 0, 0, ROWS - 1)
