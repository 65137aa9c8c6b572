"""The end-to-end canary in Dagster: its check, its job and the sensor running it.

For each table declared with ``canary:``, the ``canary_latency`` check on its PostgreSQL
asset runs one probe (:mod:`cdc_pipelines.observability.canary`): it writes the canary row
at the source and waits until PostgreSQL shows it. The step records an observation of the
PostgreSQL asset (``canary_latency_s``, which the UI plots), pushes
``cdc_canary_latency_seconds`` and ``cdc_canary_last_success_timestamp_seconds`` (the
``CdcCanaryStale`` alert reads the latter) and passes when the write arrived. The
``cdc_canary`` sensor requests one run of the ``cdc_canary`` job per interval.
"""

import inspect
import time
from collections.abc import Sequence
from typing import Any

import dagster as dg

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.defs.names import TAG_REASON, TAG_TRIGGER, AssetJob, TableNames, iso_utc
from cdc_pipelines.defs.observe_sensor import UNFINISHED
from cdc_pipelines.defs.resources import (
    KafkaResource,
    PostgresResource,
    PushgatewayResource,
    ScyllaResource,
)
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.observability import metrics
from cdc_pipelines.observability.canary import CanaryProbe, canary_of, probe

CANARY_CHECK = "canary_latency"
CANARY_JOB = "cdc_canary"
CANARY_SENSOR = "cdc_canary"
CANARY_OBSERVER = "canary"
"""The ``observed_by`` value of the canary's observations."""
REASON_CANARY = "canary"


def canary_tables(tables: Sequence[TableNames]) -> list[TableNames]:
    return [n for n in tables if n.spec.canary is not None]


def probe_result(names: TableNames, result: CanaryProbe) -> dg.AssetCheckResult:
    """Passes when the write arrived; fails with ERROR when none arrived for longer than
    ``stale_after_s`` (or ever), else with WARN (one late probe)."""
    canary = canary_of(names.spec)
    age = result.age_s()
    metadata: dict[str, Any] = {
        "written_at": dg.MetadataValue.timestamp(result.written_at_us / 1e6),
        "waited_s": round(result.waited_s, 3),
        "stale_after_s": canary.stale_after_s,
    }
    if result.last_arrival is not None:
        metadata["last_arrival"] = dg.MetadataValue.timestamp(result.last_arrival)
    if result.arrived:
        return dg.AssetCheckResult(
            check_name=CANARY_CHECK,
            asset_key=names.postgres_key,
            passed=True,
            description=result.describe(),
            metadata={"canary_latency_s": round(result.waited_s, 3), **metadata},
        )
    stale = age is None or age > canary.stale_after_s
    return dg.AssetCheckResult(
        check_name=CANARY_CHECK,
        asset_key=names.postgres_key,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR if stale else dg.AssetCheckSeverity.WARN,
        description=result.describe(),
        metadata=metadata,
    )


def canary_check(names: TableNames, config: PipelineConfig) -> dg.AssetChecksDefinition:
    canary = canary_of(names.spec)

    @dg.asset_check(
        asset=names.postgres_key,
        name=CANARY_CHECK,
        description=(
            f"A row written to {names.source} now reaches PostgreSQL within "
            f"{canary.timeout_s:g}s (the probe's latency is observed as canary_latency_s). "
            f"Fails with ERROR when no canary arrived for {canary.stale_after_s / 60:g} "
            "minutes, with WARN when one probe was late."
        ),
    )
    def _canary(
        context: dg.AssetCheckExecutionContext,
        scylla: ScyllaResource,
        postgres: PostgresResource,
        kafka: KafkaResource,
        pushgateway: PushgatewayResource,
    ) -> dg.AssetCheckResult:
        try:
            with scylla.session(config.scylla) as session, postgres.connection() as conn:
                result = probe(
                    session,
                    conn,
                    config,
                    names.spec,
                    kafka_bootstrap_servers=kafka.bootstrap_servers,
                )
        except CdcPipelinesError as exc:
            return dg.AssetCheckResult(
                check_name=CANARY_CHECK,
                asset_key=names.postgres_key,
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"the canary probe failed: {exc}",
            )
        observed: dict[str, Any] = {
            "observed_by": CANARY_OBSERVER,
            "canary_arrived": result.arrived,
            "canary_waited_s": dg.MetadataValue.float(round(result.waited_s, 3)),
        }
        if result.latency_s is not None:
            observed["canary_latency_s"] = dg.MetadataValue.float(round(result.latency_s, 3))
        context.op_execution_context.log_event(
            dg.AssetObservation(asset_key=names.postgres_key, metadata=observed)
        )
        try:
            pushgateway.push(metrics.CANARY_JOB, result.gauges(), {"table": names.source})
        except CdcPipelinesError as exc:
            context.log.warning(f"canary metrics not pushed: {exc}")
        return probe_result(names, result)

    return _canary


def canary_job(checks: Sequence[dg.AssetChecksDefinition]) -> "AssetJob":
    return dg.define_asset_job(
        CANARY_JOB,
        selection=dg.AssetSelection.checks(*checks),
        description=(
            "Writes each canary table's row at the source and waits until PostgreSQL shows "
            "it: the end-to-end latency, observed on the PostgreSQL asset and pushed to "
            "Prometheus. The cdc_canary sensor runs it every interval."
        ),
    )


def make_canary_sensor(job: "AssetJob", interval_s: int) -> dg.SensorDefinition:
    """Probe every canary table each ``interval_s``: one run of ``cdc_canary`` per interval.

    A tick skips while the previous run has not finished (a probe waits at most its
    timeout); the run key names the interval, so a missed tick requests nothing twice.
    """

    @dg.sensor(
        name=CANARY_SENSOR,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=job,
        description=inspect.cleandoc(make_canary_sensor.__doc__ or ""),
    )
    def cdc_canary(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        unfinished = context.instance.get_run_records(
            dg.RunsFilter(job_name=CANARY_JOB, statuses=UNFINISHED), limit=1
        )
        if unfinished:
            run = unfinished[0].dagster_run
            return dg.SkipReason(f"{CANARY_JOB} run {run.run_id} is still {run.status.value}")
        now_ms = int(time.time() * 1000)
        return dg.RunRequest(
            run_key=f"{REASON_CANARY}:{now_ms // (interval_s * 1000)}",
            tags={TAG_REASON: REASON_CANARY, TAG_TRIGGER: f"canary tick at {iso_utc(now_ms)}"},
        )

    return cdc_canary


def canary_definitions(
    tables: Sequence[TableNames], config: PipelineConfig
) -> tuple[list[dg.AssetChecksDefinition], list["AssetJob"], list[dg.SensorDefinition]]:
    """The canary checks, job and sensor; nothing when no table is declared a canary."""
    canaries = canary_tables(tables)
    if not canaries:
        return [], [], []
    checks = [canary_check(n, config) for n in canaries]
    job = canary_job(checks)
    interval = min(canary_of(n.spec).interval_s for n in canaries)
    return checks, [job], [make_canary_sensor(job, interval)]
