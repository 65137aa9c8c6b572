"""Build the code location's definitions from the pipeline declaration.

Adding a table to ``pipeline.yaml`` adds its assets, checks and jobs on the next
reload; an invalid declaration stops the load with the declaration's own message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from cdc_pipelines.config import PipelineConfig, load_config
from cdc_pipelines.defs import assets, canary, jobs, quality_checks, sensors
from cdc_pipelines.defs.names import AssetJob, table_names
from cdc_pipelines.defs.resources import default_resources


def build_definitions(
    config: PipelineConfig, resources: Mapping[str, object] | None = None
) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor of the declared tables."""
    tables = table_names(config)
    all_assets: list[dg.AssetsDefinition] = []
    quality = []
    for names in tables:
        all_assets.extend(assets.table_assets(names))
        for check in (
            quality_checks.target_quality_checks(names),
            quality_checks.source_quality_checks(names),
        ):
            if check is not None:
                quality.append(check)
    reconcile_jobs = [jobs.reconcile_job(n) for n in tables]
    replication_job = jobs.replication_checks_job(tables)
    schedules = [jobs.nightly_reconciliation_schedule(tables)]
    all_jobs: list[dg.JobDefinition | AssetJob] = [
        *reconcile_jobs,
        *(jobs.repair_job(n) for n in tables),
        *(jobs.initial_load_job(n) for n in tables),
        replication_job,
        jobs.deploy_connectors_job(config),
    ]
    if quality:
        quality_job = jobs.data_quality_job(quality)
        all_jobs.append(quality_job)
        schedules.append(jobs.daily_quality_schedule(quality_job))
    escalation = jobs.escalation_job()
    all_jobs.append(escalation)
    canary_checks, canary_jobs, canary_sensors = canary.canary_definitions(tables, config)
    all_jobs.extend(canary_jobs)
    lag_slos = {n.source: n.table.lag_slo for n in tables}
    all_sensors = [
        sensors.make_consumer_lag_sensor(tables, lag_slos, reconcile_jobs),
        sensors.make_connector_health_sensor(tables, config.connectors.source_name, escalation),
        sensors.make_dlq_sensor(tables, config.connectors.dlq_topic, reconcile_jobs),
        sensors.make_slice_fanout_sensor(tables, reconcile_jobs),
        sensors.make_replication_health_sensor(replication_job),
        *canary_sensors,
    ]
    return dg.Definitions(
        assets=all_assets,
        asset_checks=[*quality, *canary_checks],
        jobs=all_jobs,
        schedules=schedules,
        sensors=all_sensors,
        resources=dict(resources) if resources is not None else default_resources(),
    )


def load_definitions(path: str | os.PathLike[str] | None = None) -> dg.Definitions:
    """The definitions of the declaration at ``path`` ($CDC_PIPELINE_CONFIG, ./pipeline.yaml)."""
    return build_definitions(load_config(path))
