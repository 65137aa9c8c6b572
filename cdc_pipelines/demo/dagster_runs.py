"""The demo's reconciliation, run through Dagster on the PostgreSQL-backed instance.

The runs land in ``dagster_home``'s storage, so ``dagster dev`` shows them
afterwards: the target index, one reconciliation partition per token slice, the
dry-run repair, the applied repair and a clean second reconciliation.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import TableNames, table_names
from cdc_pipelines.devstack.stack import Reporter
from cdc_pipelines.settings import ConnectionSettings

DAGSTER_HOME = Path(__file__).resolve().parents[2] / "dagster_home"


def _materialize(
    defs: dg.Definitions,
    key: dg.AssetKey,
    instance: dg.DagsterInstance,
    partition: str | None = None,
    run_config: dict[str, object] | None = None,
) -> dict[str, object]:
    asset = defs.get_assets_def(key)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    result = dg.materialize(
        [asset],
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        run_config={**quiet, **(run_config or {})},
        tags={"cdc/source": "demo"},
    )
    events = result.asset_materializations_for_node(asset.node_def.name)
    return {k: v.value for k, v in events[0].metadata.items()} if events else {}


def _reconcile(
    defs: dg.Definitions, names: TableNames, instance: dg.DagsterInstance
) -> dict[str, int]:
    _materialize(defs, names.target_index_key, instance)
    totals = {"source_rows": 0, "missing": 0, "extra": 0, "mismatched": 0, "in_flight": 0}
    for slice_id in names.slices:
        metadata = _materialize(defs, names.reconciliation_key, instance, slice_id)
        for field in totals:
            totals[field] += int(metadata.get(field, 0))  # type: ignore[call-overload]
    return totals


def reconcile_demo(config: PipelineConfig, settings: ConnectionSettings, report: Reporter) -> int:
    defs = build_definitions(config)
    instance = dg.DagsterInstance.from_config(str(DAGSTER_HOME))
    try:
        names = table_names(config)[0]
        found = _reconcile(defs, names, instance)
        report(
            f"   {names.source}: {found['source_rows']} rows in {len(names.slices)} slices; "
            f"missing {found['missing']}, extra {found['extra']}, "
            f"mismatched {found['mismatched']}, in flight {found['in_flight']}"
        )
        repair_op = defs.get_assets_def(names.repair_key).node_def.name
        planned = upserts = deletes = 0
        script = ""
        for slice_id in names.slices:
            dry = _materialize(defs, names.repair_key, instance, slice_id)
            planned += int(dry.get("upserts", 0)) + int(dry.get("deletes", 0))  # type: ignore[call-overload]
            if not script and dry.get("upserts"):
                script = str(dry.get("sql_script", ""))
        report(f"   dry-run repair: {planned} change(s) planned; first script: {script}")
        for slice_id in names.slices:
            applied = _materialize(
                defs,
                names.repair_key,
                instance,
                slice_id,
                run_config={"ops": {repair_op: {"config": {"apply": True}}}},
            )
            upserts += int(applied.get("upserts", 0))  # type: ignore[call-overload]
            deletes += int(applied.get("deletes", 0))  # type: ignore[call-overload]
        report(f"   repair applied: {upserts} upserted, {deletes} deleted")
        again = _reconcile(defs, names, instance)
        remaining = again["missing"] + again["extra"] + again["mismatched"]
        report(f"   second reconciliation: {remaining} discrepancies")
        return 0 if remaining == 0 else 1
    finally:
        instance.dispose()
