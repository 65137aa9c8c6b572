"""A reconciliation run through Dagster in process: the resources it is given are the ones it
uses, and each slice's check says whether that slice agrees.

The ``items`` table is written to both sides directly, one row short in PostgreSQL; the
target index and the slice holding that row are materialized like the reconcile job's runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import psycopg
from psycopg import sql

from cdc_pipelines.config import load_config
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import TableNames, table_names
from cdc_pipelines.defs.reconciliation import SLICE_CHECK
from cdc_pipelines.defs.resources import KafkaResource, ScratchStorageResource, default_resources
from cdc_pipelines.reconcile.scratch import ScratchLayout
from cdc_pipelines_tests.e2e.conftest import ITEMS_MISSING_ID, ITEMS_ROWS, items_partition_of

UNREACHABLE_KAFKA = "127.0.0.1:1"
"""Nothing listens on port 1, so every Kafka request of the run fails, naming this address."""


def reconcile(
    names: TableNames,
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    partition: str,
) -> tuple[dg.AssetMaterialization, dg.AssetMaterialization, dg.AssetCheckEvaluation]:
    """The target index, then one slice: the two runs of a reconciliation requested by a sensor."""
    index_def = defs.get_assets_def(names.target_index_key)
    index = dg.materialize([index_def], instance=instance, resources=defs.resources)
    assert index.success
    (indexed,) = index.asset_materializations_for_node(index_def.node_def.name)
    slice_def = defs.get_assets_def(names.reconciliation_key)
    run = dg.materialize(
        [slice_def], instance=instance, resources=defs.resources, partition_key=partition
    )
    assert run.success
    (reconciled,) = run.asset_materializations_for_node(slice_def.node_def.name)
    (check,) = run.get_asset_check_evaluations()
    return indexed, reconciled, check


def test_a_dagster_reconciliation_reads_offsets_from_the_kafka_its_resource_names(
    items_declaration: Path, cql_session, instance, tmp_path, kafka_bootstrap
):
    config = load_config(items_declaration)
    (names,) = table_names(config)
    scratch = tmp_path / "scratch"
    resources = {
        **default_resources(),
        "kafka": KafkaResource(bootstrap_servers=UNREACHABLE_KAFKA),
        "scratch": ScratchStorageResource(uri=str(scratch)),
    }
    defs = build_definitions(config, resources)
    partition = items_partition_of(cql_session, names, ITEMS_MISSING_ID)

    indexed, reconciled, _ = reconcile(names, defs, instance, partition)

    # The scan marker asked the resource's Kafka for the topic's end offsets, not the default.
    marker = json.loads(ScratchLayout(scratch, names.source).scan_marker.read_text())
    assert marker["end_offsets"] is None
    assert f"Kafka at {UNREACHABLE_KAFKA}:" in marker["kafka_error"]
    shown = indexed.metadata["topic_end_offsets_unknown"].value
    assert f"Kafka at {UNREACHABLE_KAFKA}:" in str(shown)
    # Verification fell back to the settle window, saying why, and the slice still completed.
    verification = str(reconciled.metadata["verification"].value)
    assert f"Kafka at {UNREACHABLE_KAFKA}:" in verification
    assert "settle window" in verification
    assert kafka_bootstrap not in verification
    assert reconciled.metadata["missing"].value == 1


def test_each_slice_check_says_whether_the_slice_agrees(
    items_declaration: Path, cql_session, instance, tmp_path
):
    config = load_config(items_declaration)
    (names,) = table_names(config)
    resources = {**default_resources(), "scratch": ScratchStorageResource(uri=str(tmp_path))}
    defs = build_definitions(config, resources)
    disagreeing = items_partition_of(cql_session, names, ITEMS_MISSING_ID)
    agreeing = next(p for p in names.slices if p != disagreeing)

    _, reconciled, failed = reconcile(names, defs, instance, disagreeing)
    assert (failed.check_name, failed.partition, failed.passed) == (SLICE_CHECK, disagreeing, False)
    assert failed.severity == dg.AssetCheckSeverity.WARN
    counts = {k: failed.metadata[k].value for k in ("discrepancies", "missing", "extra")}
    assert counts == {"discrepancies": 1, "missing": 1, "extra": 0}
    assert failed.metadata["token_range"].value == reconciled.metadata["token_range"].value
    assert reconciled.metadata["in_sync"].value is False
    token_range = str(reconciled.metadata["token_range"].value)  # "(start, end]"
    start, end = token_range.strip("(]").split(", ")
    assert disagreeing.endswith(f"{start} < token <= {end}")

    _, in_sync, passed = reconcile(names, defs, instance, agreeing)
    assert in_sync.metadata["in_sync"].value is True
    assert (passed.check_name, passed.partition, passed.passed) == (SLICE_CHECK, agreeing, True)
    assert passed.metadata["discrepancies"].value == 0


def test_the_initial_load_job_fills_an_empty_target_slice_by_slice(
    items_declaration: Path, instance, tmp_path, postgres_dsn
):
    config = load_config(items_declaration)
    (names,) = table_names(config)
    target = sql.Identifier(names.spec.target_schema, names.spec.target_table)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {}").format(target))
    resources = {**default_resources(), "scratch": ScratchStorageResource(uri=str(tmp_path))}
    defs = build_definitions(config, resources)
    index_def = defs.get_assets_def(names.target_index_key)
    assert dg.materialize([index_def], instance=instance, resources=resources).success

    job = defs.resolve_job_def(names.initial_load_job)
    # What a backfill of the job runs: the partition's config applies the repair. This table
    # has no stream (no topic), so the sink's catch-up cannot be confirmed: refused.
    first = job.execute_in_process(instance=instance, partition_key=names.slices[0])
    (refused,) = first.asset_materializations_for_node(names.repair_op)
    assert refused.metadata["applied"].value is False
    assert "catch-up is unconfirmed" in str(refused.metadata["refused"].value)
    # Loading it anyway is the operator's explicit choice.
    anyway = {"ops": {names.repair_op: {"config": {"apply": True, "allow_unconfirmed": True}}}}
    applied = 0
    for partition in names.slices:
        run = job.execute_in_process(instance=instance, partition_key=partition, run_config=anyway)
        (repaired,) = run.asset_materializations_for_node(names.repair_op)
        assert repaired.metadata["applied"].value is True
        applied += repaired.metadata["upserted"].value
    assert applied == ITEMS_ROWS
    with psycopg.connect(postgres_dsn) as conn:
        loaded = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
    assert loaded == (ITEMS_ROWS,)

    # A reconciliation afterwards finds every slice in sync.
    assert dg.materialize([index_def], instance=instance, resources=resources).success
    for partition in names.slices:
        _, reconciled, check = reconcile(names, defs, instance, partition)
        assert reconciled.metadata["discrepancies"].value == 0
        assert check.passed
