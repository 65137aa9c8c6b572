"""A partitioned reconciliation run through Dagster against the real services.

The replicated table (streamed through Connect, then drifted) is indexed and each
token slice materialized as a partition; the metadata must carry the verified
counts and a discrepancy sample, the discrepancy-rate check must fail, and a repair
run applied through run config must leave nothing to find.
"""

from __future__ import annotations

import dagster as dg
import psycopg
from psycopg import sql

from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import table_names
from cdc_pipelines.defs.resources import ScratchStorageResource, default_resources
from cdc_pipelines.postgres.audit import AuditTables


def materialize_slices(defs, key, slices, instance, run_config=None):
    asset = defs.get_assets_def(key)
    results = {}
    for slice_id in slices:
        result = dg.materialize(
            [asset],
            partition_key=slice_id,
            instance=instance,
            resources=defs.resources,
            run_config=run_config,
        )
        assert result.success
        (event,) = result.asset_materializations_for_node(asset.node_def.name)
        results[slice_id] = event.metadata
    return results


def test_partitioned_reconciliation_reports_verified_drift_and_repair_clears_it(
    replicated,
    tmp_path,
    postgres_dsn,
):
    config, table, _, _ = replicated
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {}.all_types WHERE id IN (5, 6)").format(
                sql.Identifier(table.target_schema)
            )
        )
    resources = {**default_resources(), "scratch": ScratchStorageResource(uri=str(tmp_path))}
    defs = build_definitions(config, resources)
    (names,) = table_names(config)
    instance = dg.DagsterInstance.ephemeral()

    index = dg.materialize(
        [defs.get_assets_def(names.target_index_key)], instance=instance, resources=resources
    )
    assert index.success
    (indexed,) = index.asset_materializations_for_node(
        defs.get_assets_def(names.target_index_key).node_def.name
    )
    assert indexed.metadata["rows"].value == 298

    slices = materialize_slices(defs, names.reconciliation_key, names.slices, instance)
    assert sum(m["missing"].value for m in slices.values()) == 2
    assert sum(m["source_rows"].value for m in slices.values()) == 300
    assert all(m["verified"].value for m in slices.values())
    with_drift = [m for m in slices.values() if m["missing"].value]
    assert with_drift and all(m["discrepancy_sample"].value.records for m in with_drift)

    checks = defs.resolve_job_def("replication_checks").execute_in_process(instance=instance)
    rate = [
        e
        for e in checks.get_asset_check_evaluations()
        if e.asset_key == names.postgres_key and e.check_name == "discrepancy_rate"
    ]
    assert rate and not rate[0].passed

    repair_op = defs.get_assets_def(names.repair_key).node_def.name
    dry = materialize_slices(defs, names.repair_key, names.slices, instance)
    assert sum(m["upserts"].value for m in dry.values()) == 2
    assert not any(m["applied"].value for m in dry.values())
    assert any("INSERT INTO" in m["sql"].value for m in dry.values())
    applied = materialize_slices(
        defs,
        names.repair_key,
        names.slices,
        instance,
        run_config={"ops": {repair_op: {"config": {"apply": True, "audit": "keys"}}}},
    )
    assert sum(m["upserts"].value for m in applied.values()) == 2
    repaired = [m for m in applied.values() if m["upserts"].value]
    run_ids = [m["run_id"].value for m in repaired]
    assert all(m["audit"].value.endswith("repair_actions (keys)") for m in repaired)
    with psycopg.connect(postgres_dsn) as conn:
        audited = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE run_id = ANY(%s) AND action = 'upsert'").format(
                AuditTables().actions
            ),
            (run_ids,),
        ).fetchone()
    assert audited == (2,)  # the run id in the UI finds every key the repair wrote

    dg.materialize(
        [defs.get_assets_def(names.target_index_key)], instance=instance, resources=resources
    )
    again = materialize_slices(defs, names.reconciliation_key, names.slices, instance)
    assert sum(m["discrepancies"].value for m in again.values()) == 0
