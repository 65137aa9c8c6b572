"""The replication-health sensor: the steady cadence of the ``replication_checks`` job.

Each tick requests one run of the job, which observes every table's health and evaluates
its checks, unless the previous run is still queued or running. The tick itself reads only
Dagster's run storage; every service call happens in the run, with its own timeouts.
"""

import inspect
import time

import dagster as dg

from cdc_pipelines.defs.jobs import REPLICATION_CHECKS_JOB
from cdc_pipelines.defs.names import REASON_HEALTH, TAG_REASON, TAG_TRIGGER, AssetJob, iso_utc

HEALTH_INTERVAL_S = 300
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def make_replication_health_sensor(
    job: "AssetJob", minimum_interval_seconds: int = HEALTH_INTERVAL_S
) -> dg.SensorDefinition:
    """Observe every table's replication health and evaluate its checks every few minutes.

    Each tick requests one run of ``replication_checks``: per table, one step records an
    observation of the source, the topic and the PostgreSQL copy (lag in messages and
    seconds with its Burrow status, sink and task state, dead-letter depth, row counts, the
    latest reconciliation's verdicts by kind) and evaluates the lag SLO, freshness, parity
    and discrepancy checks against it. The UI plots the observations' numbers over time. A
    tick skips while the previous run has not finished; the run key names the interval.
    """

    @dg.sensor(
        name="replication_health",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=job,
        description=inspect.cleandoc(make_replication_health_sensor.__doc__ or ""),
    )
    def replication_health(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        unfinished = context.instance.get_run_records(
            dg.RunsFilter(job_name=REPLICATION_CHECKS_JOB, statuses=UNFINISHED), limit=1
        )
        if unfinished:
            run = unfinished[0].dagster_run
            return dg.SkipReason(
                f"{REPLICATION_CHECKS_JOB} run {run.run_id} is still {run.status.value}"
            )
        now_ms = int(time.time() * 1000)
        interval = now_ms // (minimum_interval_seconds * 1000)
        return dg.RunRequest(
            run_key=f"{REASON_HEALTH}:{interval}",
            tags={TAG_REASON: REASON_HEALTH, TAG_TRIGGER: f"health tick at {iso_utc(now_ms)}"},
        )

    return replication_health
