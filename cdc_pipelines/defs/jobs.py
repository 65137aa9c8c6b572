"""Jobs and schedules: reconcile and repair a table, deploy connectors, check and escalate.

Per table: ``reconcile__<ks>__<t>`` (target index, then one run per slice partition) and
``repair_slice__<ks>__<t>`` (one slice partition, dry run unless ``apply: true``),
``initial_load__<ks>__<t>`` (reconcile and apply, per slice partition). Shared: connector
deployment, the replication health observation with its checks (``replication_checks``, run
by the ``replication_health`` sensor), the daily data-quality checks, escalations.
"""

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import dagster as dg

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.connect.configs import connector_configs, sink_connector_configs
from cdc_pipelines.defs.names import (
    ESCALATION_JOB,
    ESCALATION_OP,
    REASON_NIGHTLY,
    STAGE_INDEX,
    TAG_TABLE,
    AssetJob,
    TableNames,
)
from cdc_pipelines.defs.replication_checks import REPLICATION_CHECKS
from cdc_pipelines.defs.resources import KafkaConnectResource, ScyllaResource
from cdc_pipelines.errors import ConnectError

SLICE_PROCESSES = 2
"""Ops of one reconcile run in separate processes (a run holds the index or one slice)."""
NIGHTLY_CRON = "0 2 * * *"
DAILY_QUALITY_CRON = "0 6 * * *"
TIMEZONE = "UTC"
REPLICATION_CHECKS_JOB = "replication_checks"
DATA_QUALITY_JOB = "data_quality"
DEPLOY_JOB = "deploy_connectors"
TRACE_SHOWN = 4000


def reconcile_job(names: TableNames) -> "AssetJob":
    return dg.define_asset_job(
        names.reconcile_job,
        selection=dg.AssetSelection.assets(names.target_index_key, names.reconciliation_key),
        description=(
            f"Reconcile {names.source}: a run selecting {names.target_index_key.path[-1]} "
            "rebuilds the PostgreSQL side; a run per token-slice partition of "
            f"{names.reconciliation_key.path[-1]} diffs that slice. Request it through the "
            "sensors or the nightly schedule, or backfill the reconciliation asset in the UI."
        ),
        executor_def=dg.multiprocess_executor.configured({"max_concurrent": SLICE_PROCESSES}),
        run_tags={TAG_TABLE: names.source},
    )


def repair_job(names: TableNames) -> "AssetJob":
    return dg.define_asset_job(
        names.repair_job,
        selection=dg.AssetSelection.assets(names.repair_key)
        | dg.AssetSelection.checks_for_assets(names.scylla_key),
        description=(
            f"Repair one token-slice partition of {names.source} in PostgreSQL. A dry run unless "
            "the run config "
            "sets ops.<repair op>.config.apply: true; blocked by failing source-side checks."
        ),
        run_tags={TAG_TABLE: names.source},
    )


def initial_load_job(names: TableNames) -> "AssetJob":
    """Load or heal the table slice by slice: each partition's run reconciles its slice and
    applies the repair of what it verified (``apply: true`` is this job's default config).

    Meant for a table whose target is empty or far behind (Scylla's CDC has no snapshot):
    materialize the target index once, then backfill every partition of this job; the
    backfill page shows the slices loaded so far. Writes are race-safe as in any repair:
    a row the sink wrote meanwhile is never overwritten by an older one.
    """
    return dg.define_asset_job(
        names.initial_load_job,
        selection=dg.AssetSelection.assets(names.reconciliation_key, names.repair_key)
        | dg.AssetSelection.checks_for_assets(names.scylla_key),
        config={"ops": {names.repair_op: {"config": {"apply": True}}}},
        description=(
            f"Initial load (or heal) of {names.source}, one token slice per partition: reconcile "
            "the slice, then apply its repair. Materialize "
            f"{names.target_index_key.path[-1]} first, then backfill every partition of this "
            "job; progress shows on the backfill's page."
        ),
        run_tags={TAG_TABLE: names.source},
    )


def replication_checks_job(tables: Sequence[TableNames]) -> "AssetJob":
    """Observe every table's replication health and evaluate its replication checks.

    One step per table (see :func:`cdc_pipelines.defs.assets.observed_assets`); the
    data-quality checks on the same assets are left to the ``data_quality`` job.
    """
    observed = [k for n in tables for k in (n.scylla_key, n.kafka_key, n.postgres_key)]
    checks = [dg.AssetCheckKey(n.postgres_key, name) for n in tables for name in REPLICATION_CHECKS]
    return dg.define_asset_job(
        REPLICATION_CHECKS_JOB,
        selection=dg.AssetSelection.assets(*observed).without_checks()
        | dg.AssetSelection.checks(*checks),
        description=(
            "Observes every table's replication health (lag, sink state, dead letters, row "
            "counts, latest reconciliation) and evaluates its checks against it: lag SLO, "
            "freshness, row-count parity and discrepancy rate. The replication_health sensor "
            "runs it every few minutes."
        ),
    )


def data_quality_job(checks: Sequence[dg.AssetChecksDefinition]) -> "AssetJob":
    return dg.define_asset_job(
        DATA_QUALITY_JOB,
        selection=dg.AssetSelection.checks(*checks),
        description="The declared expectations of every table, with Great Expectations.",
    )


def nightly_reconciliation_schedule(tables: Sequence[TableNames]) -> dg.ScheduleDefinition:
    """Every night, reconcile every table: one index run each, then the slices fan out."""
    selection = dg.AssetSelection.assets(*(n.target_index_key for n in tables))

    @dg.schedule(
        name="nightly_reconciliation",
        cron_schedule=NIGHTLY_CRON,
        execution_timezone=TIMEZONE,
        target=selection,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Reconciles every declared table each night: one run per table rebuilds its "
            "target index, and the reconcile_slices_after_index sensor then requests one run "
            "per token slice (a partitioned backfill of the reconciliation asset)."
        ),
    )
    def nightly_reconciliation(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        night = context.scheduled_execution_time or datetime.now(UTC)
        stamp = night.strftime("%Y-%m-%d")
        for names in tables:
            yield dg.RunRequest(
                run_key=f"{REASON_NIGHTLY}:{names.source}:{stamp}",
                asset_selection=[names.target_index_key],
                tags=names.run_tags(REASON_NIGHTLY, STAGE_INDEX, f"night of {stamp}"),
            )

    return nightly_reconciliation


def daily_quality_schedule(job: "AssetJob") -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_data_quality",
        cron_schedule=DAILY_QUALITY_CRON,
        execution_timezone=TIMEZONE,
        target=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The declared data-quality expectations of every table, once a day.",
    )


class DeployConfig(dg.Config):
    """``sinks_only`` leaves the Scylla source out (its plugin is not installed everywhere)."""

    sinks_only: bool = False
    plan_only: bool = False


def deploy_connectors_job(declaration: PipelineConfig) -> dg.JobDefinition:
    @dg.op(name="apply_connector_configs")
    def deploy(
        context: dg.OpExecutionContext,
        config: DeployConfig,
        kafka_connect: KafkaConnectResource,
        scylla: ScyllaResource,
    ) -> dg.Output[None]:
        desired = (
            sink_connector_configs(declaration)
            if config.sinks_only
            else connector_configs(declaration, scylla.contact_point_list(), scylla.port)
        )
        client = kafka_connect.client()
        changes = client.plan(desired) if config.plan_only else client.apply(desired)
        for change in changes:
            context.log.info(change.describe())
        changed = [c for c in changes if c.kind != "unchanged"]
        return dg.Output(
            None,
            metadata={
                "connectors": len(changes),
                "changed": len(changed),
                "applied": not config.plan_only,
                "changes": dg.MetadataValue.md(
                    "```\n" + "\n".join(c.describe() for c in changes) + "\n```"
                ),
            },
        )

    @dg.job(
        name=DEPLOY_JOB,
        description=(
            "Create or update the connectors generated from pipeline.yaml; configs are "
            "validated first and unchanged ones are not touched."
        ),
    )
    def deploy_connectors() -> None:
        deploy()

    return deploy_connectors


class EscalationConfig(dg.Config):
    """Filled by the connector_health sensor when a task's retry budget is spent."""

    connector: str
    unit: str
    table: str = ""
    attempts: int = 0
    first_failed_ms: int = 0
    trace: str = ""


def escalation_job() -> dg.JobDefinition:
    @dg.op(name=ESCALATION_OP)
    def escalate(
        context: dg.OpExecutionContext,
        config: EscalationConfig,
        kafka_connect: KafkaConnectResource,
    ) -> None:
        since = datetime.fromtimestamp(config.first_failed_ms / 1000, UTC).isoformat()
        trace = config.trace
        try:
            status = kafka_connect.client().status(config.connector)
        except ConnectError as exc:
            trace = trace or str(exc)
        else:
            if status.healthy:
                context.log.info(f"{config.connector} is RUNNING again; nothing to escalate")
                return
            current = [t.trace for t in status.failed_tasks if t.trace] or [status.trace or ""]
            trace = current[0] or trace
        raise dg.Failure(
            description=(
                f"Kafka Connect {config.connector} ({config.unit}) of {config.table or 'the source'} "
                f"has been FAILED since {since}; {config.attempts} automatic restarts did not help. "
                "Read the trace, fix the cause, then restart it "
                "('cdc-pipelines connectors restart')."
            ),
            metadata={
                "connector": config.connector,
                "unit": config.unit,
                "attempts": config.attempts,
                "failing_since": dg.MetadataValue.timestamp(config.first_failed_ms / 1000),
                "trace": dg.MetadataValue.md(f"```\n{trace[:TRACE_SHOWN]}\n```"),
            },
            allow_retries=False,
        )

    @dg.job(
        name=ESCALATION_JOB,
        description=(
            "Fails with the connector's stack trace so run-failure alerts reach a human; "
            "requested by the connector_health sensor when restarts did not help."
        ),
    )
    def escalate_connector_failure() -> None:
        escalate()

    return escalate_connector_failure
