"""The demo's reconciliation, run through Dagster on the PostgreSQL-backed instance.

The runs land in ``dagster_home``'s storage, so ``dagster dev`` shows them afterwards and
the UI tells the story: every table reconciled slice by slice as a backfill of its
reconciliation partitions, the replication checks observed before the repair (the drift
check red on the drifted table), the dry-run and applied repair of the slices that
disagree, a clean second reconciliation, the checks observed again (green), and the
data-quality checks. First, one canary probe measures the end-to-end latency; last, one tick
of each sensor that pushes metrics, so Prometheus and the dashboard have every number.

A backfill launched from the UI is run by the daemon; the demo has no daemon, so it runs
the same one-run-per-partition backfill in process, tags each run with the backfill's id,
and records the backfill with its outcome, so it is listed with its runs under Backfills.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.asset_backfill import AssetBackfillData
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.utils import make_new_backfill_id

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.canary import CANARY_JOB, canary_tables
from cdc_pipelines.defs.jobs import DATA_QUALITY_JOB, REPLICATION_CHECKS_JOB
from cdc_pipelines.defs.names import STAGE_INDEX, STAGE_SLICE, TableNames, table_names
from cdc_pipelines.defs.replication_checks import CHECK_DISCREPANCY_RATE
from cdc_pipelines.devstack.stack import Reporter
from cdc_pipelines.settings import ConnectionSettings

DAGSTER_HOME = Path(__file__).resolve().parents[2] / "dagster_home"
REASON = "demo"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
METRICS_SENSORS = ("consumer_lag", "connector_health", "dead_letter_queue")
"""The sensors that push gauges (the daemon ticks them; the demo once each)."""
VERDICTS = ("source_rows", "missing", "extra", "mismatched", "target_ahead", "in_flight")


def _materialize(
    defs: dg.Definitions,
    key: dg.AssetKey,
    instance: dg.DagsterInstance,
    partition: str | None = None,
    run_config: dict[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, object]:
    asset = defs.get_assets_def(key)
    result = dg.materialize(
        [asset],
        instance=instance,
        resources=defs.resources,
        partition_key=partition,
        run_config={**QUIET, **(run_config or {})},
        tags={"cdc/source": "demo", **(tags or {})},
    )
    events = result.asset_materializations_for_node(asset.node_def.name)
    return {k: v.value for k, v in events[0].metadata.items()} if events else {}


def _count(metadata: Mapping[str, object], field: str) -> int:
    value = metadata.get(field, 0)
    return int(value) if isinstance(value, int | float) else 0


def _reconcile(
    defs: dg.Definitions, names: TableNames, instance: dg.DagsterInstance, title: str
) -> tuple[dict[str, int], list[str]]:
    """The target index, then every slice as one backfill; the verdict totals and the
    partitions whose slice disagrees."""
    index_tags = names.run_tags(REASON, STAGE_INDEX, title)
    _materialize(defs, names.target_index_key, instance, tags=index_tags)
    slices = _backfill(defs, names, instance, title)
    totals = {field: sum(_count(m, field) for m in slices.values()) for field in VERDICTS}
    return totals, [p for p, m in slices.items() if not m.get("in_sync", True)]


def _backfill(
    defs: dg.Definitions, names: TableNames, instance: dg.DagsterInstance, title: str
) -> dict[str, dict[str, object]]:
    """Every partition of the table's reconciliation, one run each, recorded as a backfill."""
    backfill_id = make_new_backfill_id()
    started = time.time()
    tags = {**names.run_tags(REASON, STAGE_SLICE, title), BACKFILL_ID_TAG: backfill_id}
    done: dict[str, dict[str, object]] = {}
    try:
        for partition in names.slices:
            done[partition] = _materialize(
                defs, names.reconciliation_key, instance, partition, tags=tags
            )
    finally:
        _record_backfill(defs, names, instance, backfill_id, started, title, list(done))
    return done


def _record_backfill(
    defs: dg.Definitions,
    names: TableNames,
    instance: dg.DagsterInstance,
    backfill_id: str,
    started: float,
    title: str,
    done: Sequence[str],
) -> None:
    """Record the finished backfill as the daemon would have left it: every partition
    requested, those ``done`` materialized, the rest failed."""
    graph = defs.resolve_asset_graph()
    key = names.reconciliation_key
    data = AssetBackfillData.from_asset_partitions(
        asset_graph=graph,
        partition_names=list(names.slices),
        asset_selection=[key],
        dynamic_partitions_store=instance,
        backfill_start_timestamp=started,
        all_partitions=False,
    )
    materialized = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(key, p) for p in done}, graph
    )
    data = data._replace(
        requested_runs_for_target_roots=True,
        requested_subset=data.target_subset,
        materialized_subset=materialized,
        failed_and_downstream_subset=data.target_subset - materialized,
    )
    complete = len(done) == len(names.slices)
    instance.add_backfill(
        PartitionBackfill(
            backfill_id=backfill_id,
            status=BulkActionStatus.COMPLETED_SUCCESS if complete else BulkActionStatus.FAILED,
            from_failure=False,
            tags={"cdc/source": "demo", **names.run_tags(REASON, STAGE_SLICE, title)},
            backfill_timestamp=started,
            asset_selection=[key],
            asset_backfill_data=data,
            title=f"reconcile_{names.ident}",
            description=f"{title}: every token slice of {names.source}, one run each (in process)",
            backfill_end_timestamp=time.time(),
        )
    )


def _job(defs: dg.Definitions, name: str) -> dg.JobDefinition:
    with warnings.catch_warnings():
        # Binding resources to the sensors' jobs passes Dagster's own beta ``owners`` along.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return defs.resolve_job_def(name)


def _check_replication(
    defs: dg.Definitions, instance: dg.DagsterInstance
) -> dict[dg.AssetKey, dict[str, dg.AssetCheckEvaluation]]:
    """Observe every table's health and evaluate its replication checks (one run)."""
    result = _job(defs, REPLICATION_CHECKS_JOB).execute_in_process(
        instance=instance, run_config=QUIET, tags={"cdc/source": "demo"}
    )
    found: dict[dg.AssetKey, dict[str, dg.AssetCheckEvaluation]] = {}
    for evaluation in result.get_asset_check_evaluations():
        found.setdefault(evaluation.asset_key, {})[evaluation.check_name] = evaluation
    return found


def _probe_canary(
    defs: dg.Definitions, tables: Sequence[TableNames], instance: dg.DagsterInstance
) -> list[str]:
    """One run of the canary job, as its sensor requests every minute; what each probe saw."""
    if not canary_tables(tables):
        return []
    result = _job(defs, CANARY_JOB).execute_in_process(
        instance=instance, run_config=QUIET, tags={"cdc/source": "demo"}
    )
    return [e.description or "" for e in result.get_asset_check_evaluations()]


def _tick_metrics_sensors(defs: dg.Definitions, instance: dg.DagsterInstance) -> list[str]:
    """One tick of each sensor that pushes metrics (lag, connector health, dead letters),
    as the daemon would run them; their run requests are left alone. What each said."""
    said = []
    for name in METRICS_SENSORS:
        sensor = defs.get_sensor_def(name)
        with dg.build_sensor_context(
            instance=instance, definitions=defs, sensor_name=name, resources=defs.resources
        ) as context:
            result = sensor(context)
        skip = getattr(result, "skip_reason", None)
        said.append(f"{name}: {skip.skip_message if skip else 'ticked'}")
    return said


def _checks_line(
    tables: Sequence[TableNames], found: Mapping[dg.AssetKey, Mapping[str, dg.AssetCheckEvaluation]]
) -> str:
    parts = []
    for names in tables:
        checks = found.get(names.postgres_key, {})
        failed = [
            f"{name} failed ({e.severity.value})"
            for name, e in sorted(checks.items())
            if not e.passed
        ]
        passed = len(checks) - len(failed)
        parts.append(
            f"{names.source} {passed} of {len(checks)} passed"
            + (f", {', '.join(failed)}" if failed else "")
        )
    return "; ".join(parts)


def _repair(
    defs: dg.Definitions,
    names: TableNames,
    instance: dg.DagsterInstance,
    partitions: Sequence[str],
    report: Reporter,
) -> None:
    """Dry run, then apply, the repair of the partitions whose slice disagrees."""
    repair_op = defs.get_assets_def(names.repair_key).node_def.name
    tags = names.run_tags(REASON, "repair", "slices that disagree")
    planned = 0
    script = ""
    for partition in partitions:
        dry = _materialize(defs, names.repair_key, instance, partition, tags=tags)
        planned += _count(dry, "upserts") + _count(dry, "deletes")
        script = script or str(dry.get("sql_script", ""))
    report(
        f"   dry-run repair of {len(partitions)} slice(s): {planned} change(s) planned; "
        f"first script: {script}"
    )
    upserted = deleted = 0
    for partition in partitions:
        applied = _materialize(
            defs,
            names.repair_key,
            instance,
            partition,
            run_config={"ops": {repair_op: {"config": {"apply": True}}}},
            tags=tags,
        )
        if applied.get("refused"):
            report(f"   repair of {partition} refused: {applied['refused']}")
        upserted += _count(applied, "upserted")
        deleted += _count(applied, "deleted")
    report(f"   repair applied: {upserted} upserted, {deleted} deleted")


def reconcile_demo(config: PipelineConfig, settings: ConnectionSettings, report: Reporter) -> int:
    defs = build_definitions(config)
    instance = dg.DagsterInstance.from_config(str(DAGSTER_HOME))
    try:
        tables = table_names(config)
        for line in _probe_canary(defs, tables, instance):
            report(f"   canary: {line}")
        drifted = tables[0]
        disagreeing: list[str] = []
        for names in tables:
            found, partitions = _reconcile(defs, names, instance, "demo: first reconciliation")
            if names == drifted:
                disagreeing = partitions
            report(
                f"   {names.source}: {found['source_rows']} rows in {len(names.slices)} slices "
                f"(a backfill of {names.reconciliation_key.path[-1]}); missing "
                f"{found['missing']}, extra {found['extra']}, mismatched {found['mismatched']}, "
                f"target ahead {found['target_ahead']}, in flight {found['in_flight']}"
            )
        before = _check_replication(defs, instance)
        report(f"   checks before the repair: {_checks_line(tables, before)}")
        _repair(defs, drifted, instance, disagreeing, report)
        again, _ = _reconcile(defs, drifted, instance, "demo: after the repair")
        remaining = again["missing"] + again["extra"] + again["mismatched"]
        report(f"   second reconciliation: {remaining} discrepancies")
        after = _check_replication(defs, instance)
        report(f"   checks after the repair: {_checks_line(tables, after)}")
        quality = _job(defs, DATA_QUALITY_JOB).execute_in_process(
            instance=instance, run_config=QUIET, tags={"cdc/source": "demo"}
        )
        expectations = quality.get_asset_check_evaluations()
        report(
            f"   data quality: {sum(e.passed for e in expectations)} of {len(expectations)} "
            "expectations met"
        )
        for line in _tick_metrics_sensors(defs, instance):
            report(f"   metrics pushed by {line}")
        drift_check = after.get(drifted.postgres_key, {}).get(CHECK_DISCREPANCY_RATE)
        clean = remaining == 0 and drift_check is not None and drift_check.passed
        return 0 if clean else 1
    finally:
        instance.dispose()
