"""The consumer-lag sensor: Burrow-style status per table, time lag, reconciliation after incidents.

Each tick samples every sink's consumer group in one pass, keeps a bounded window of
samples per table in the cursor and observes the PostgreSQL copy of each table.
"""

import inspect
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from psycopg import sql

from cdc_pipelines.config import LagSlo
from cdc_pipelines.defs.health import LAG_OBSERVER
from cdc_pipelines.defs.names import REASON_LAG, AssetJob, TableNames, iso_utc
from cdc_pipelines.defs.resources import KafkaResource, PostgresResource, PushgatewayResource
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.kafka import lag
from cdc_pipelines.kafka.lag_sampler import ConsumerTarget, TargetSample
from cdc_pipelines.observability import metrics
from cdc_pipelines.observability.metrics import Gauge
from cdc_pipelines.scylla.schema import CDC_LOG_TTL_S

LAG_INTERVAL_S = 30
KAFKA_CALL_TIMEOUT_S = 15.0
"""One deadline for every Kafka request of a tick."""
ESTIMATE_TIMEOUT_S = 5
LAG_METRICS_JOB = metrics.LAG_JOB


def make_consumer_lag_sensor(
    tables: Sequence[TableNames],
    lag_slos: Mapping[str, LagSlo],
    jobs: Sequence["AssetJob"],
    minimum_interval_seconds: int = LAG_INTERVAL_S,
) -> dg.SensorDefinition:
    """Burrow-style lag status of every sink's consumer group, and reconciliation after incidents.

    Each tick samples end offsets, committed offsets, newest-message timestamps and group
    membership of every ``connect-<sink>`` group, keeps the last ``LAG_WINDOW_SIZE`` ticks
    per table in the cursor, and observes ``postgres/<schema>/<t>`` with the lag in
    messages and in seconds (interpolated from message timestamps). When a table's status
    returns to OK after an incident (WARN, STALL, STOP or REWIND), it requests a
    reconciliation of that table whose run key names the incident.
    """

    @dg.sensor(
        name="consumer_lag",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=list(jobs),
        description=inspect.cleandoc(make_consumer_lag_sensor.__doc__ or ""),
    )
    def consumer_lag(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        postgres: PostgresResource,
        pushgateway: PushgatewayResource,
    ) -> dg.SensorResult:
        now_ms = int(time.time() * 1000)
        previous = lag.loads(context.cursor)
        targets = [ConsumerTarget(n.consumer_group, n.topic) for n in tables]
        samples = kafka.lag_sampler(KAFKA_CALL_TIMEOUT_S).sample(targets, now_ms)
        estimates = _row_estimates(context, postgres, tables)
        states: dict[str, lag.TableLagState] = {}
        events: list[dg.AssetObservation] = []
        requests: list[dg.RunRequest] = []
        gauges: list[Gauge] = []
        for names, sample in zip(tables, samples, strict=True):
            state, evaluation, recovery = lag.advance(
                previous.get(names.source, lag.TableLagState()), sample.tick, now_ms
            )
            states[names.source] = state
            events.extend(
                _lag_observations(
                    names,
                    sample,
                    evaluation,
                    state,
                    estimates.get(names.source),
                    lag_slos.get(names.source),
                )
            )
            gauges.extend(_lag_gauges(names, evaluation, lag_slos.get(names.source)))
            if state.status is not lag.LagStatus.OK and sample.problems:
                context.log.warning(f"{names.source}: {'; '.join(sample.problems)}")
            if recovery is not None:
                trigger = f"{recovery.worst.value} since {iso_utc(recovery.started_ms)}"
                context.log.info(
                    f"{names.source} recovered from {trigger}; requesting a reconciliation"
                )
                requests.append(
                    names.reconcile_request(
                        REASON_LAG,
                        trigger,
                        f"{REASON_LAG}:{names.source}:{recovery.worst.value}:{recovery.started_ms}",
                    )
                )
        try:
            pushgateway.push_per_table(LAG_METRICS_JOB, gauges)
        except CdcPipelinesError as exc:
            context.log.warning(f"lag metrics not pushed: {exc}")
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=lag.dumps(states),
            # Said in the tick history instead of "Sensor function returned an empty result".
            skip_reason=None if requests else _observed(states),
        )

    return consumer_lag


def _observed(states: Mapping[str, lag.TableLagState]) -> dg.SkipReason:
    """What a tick without run requests observed, by status: ``2 tables observed: OK 2``."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.status.value] = counts.get(state.status.value, 0) + 1
    shown = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    return dg.SkipReason(
        f"lag of {len(states)} table(s) observed ({shown or 'none'}); no table recovered from "
        "an incident, so no reconciliation requested"
    )


def _row_estimates(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, tables: Sequence[TableNames]
) -> dict[str, int]:
    """``pg_class.reltuples`` of every target table in one query; empty when PostgreSQL is slow."""
    schemas = [n.spec.target_schema for n in tables]
    names = [n.spec.target_table for n in tables]
    try:
        with postgres.connection() as conn, conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL statement_timeout = {}").format(
                    sql.Literal(ESTIMATE_TIMEOUT_S * 1000)
                )
            )
            rows = conn.execute(
                "SELECT n.nspname, c.relname, c.reltuples FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN unnest(%s::text[], %s::text[]) AS t(s, r) "
                "ON n.nspname = t.s AND c.relname = t.r",
                (schemas, names),
            ).fetchall()
    except Exception as exc:  # psycopg errors, pool timeouts: the estimate is optional
        context.log.warning(f"target row estimates skipped: {type(exc).__name__}: {exc}")
        return {}
    found = {(schema, table): int(tuples) for schema, table, tuples in rows}
    return {
        n.source: found[(n.spec.target_schema, n.spec.target_table)]
        for n in tables
        if found.get((n.spec.target_schema, n.spec.target_table), -1) >= 0
    }


def _lag_observations(
    names: TableNames,
    sample: TargetSample,
    evaluation: lag.LagEvaluation,
    state: lag.TableLagState,
    row_estimate: int | None,
    slo: LagSlo | None,
) -> list[dg.AssetObservation]:
    partitions = "\n".join(
        f"| {v.partition} | {v.status.value} | {v.lag_messages} | "
        f"{'?' if v.time_lag_s is None else f'{v.time_lag_s:.1f}'}{'+' if v.time_lag_is_lower_bound else ''} |"
        for v in evaluation.partitions
    )
    metadata: dict[str, Any] = {
        "observed_by": LAG_OBSERVER,
        "lag_status": evaluation.status.value,
        "lag_messages": dg.MetadataValue.int(evaluation.lag_messages),
        "lag_seconds": (
            dg.MetadataValue.float(round(evaluation.time_lag_s, 3))
            if evaluation.time_lag_s is not None
            else dg.MetadataValue.null()
        ),
        "lag_seconds_is_lower_bound": evaluation.time_lag_is_lower_bound,
        "consumer_group": names.consumer_group,
        "consumer_members": dg.MetadataValue.int(sample.tick.members)
        if sample.tick.members is not None
        else dg.MetadataValue.null(),
        "samples_in_window": evaluation.samples,
        "partitions": dg.MetadataValue.md(
            "| partition | status | lag (messages) | lag (s) |\n|---|---|---|---|\n" + partitions
        ),
    }
    if slo is not None:
        seconds = evaluation.time_lag_s
        metadata["within_lag_slo"] = evaluation.lag_messages <= slo.max_messages and (
            seconds is None or seconds <= slo.max_seconds
        )
    if state.incident_started_ms is not None:
        metadata["incident_since"] = dg.MetadataValue.timestamp(state.incident_started_ms / 1000)
    if row_estimate is not None:
        metadata["target_row_estimate"] = dg.MetadataValue.int(row_estimate)
    if sample.problems:
        metadata["problems"] = "; ".join(sample.problems)
    observations = [dg.AssetObservation(asset_key=names.postgres_key, metadata=metadata)]
    ticks = sample.tick.partitions.values()
    if sample.topic_exists:
        newest = max((p.end_timestamp_ms or 0 for p in ticks), default=0)
        topic_metadata: dict[str, Any] = {
            "observed_by": LAG_OBSERVER,
            "end_offsets": dg.MetadataValue.int(sum(p.log_end for p in ticks)),
            "retained_messages": dg.MetadataValue.int(sum(p.log_end - p.log_start for p in ticks)),
        }
        if newest:
            topic_metadata["newest_message_at"] = dg.MetadataValue.timestamp(newest / 1000)
        observations.append(dg.AssetObservation(asset_key=names.kafka_key, metadata=topic_metadata))
    return observations


def _lag_gauges(
    names: TableNames, evaluation: lag.LagEvaluation, slo: LagSlo | None
) -> list[Gauge]:
    """The table's lag, with its SLO and its CDC log's TTL for the alerting rules to compare."""
    labels = {"table": names.source, "consumer_group": names.consumer_group}
    gauges = [
        metrics.CONSUMER_LAG_MESSAGES(evaluation.lag_messages, labels),
        metrics.CONSUMER_LAG_STATUS(evaluation.status.severity, labels),
        metrics.CDC_LOG_TTL_SECONDS(CDC_LOG_TTL_S, labels),
    ]
    if evaluation.time_lag_s is not None:
        gauges.append(metrics.CONSUMER_LAG_SECONDS(evaluation.time_lag_s, labels))
    if slo is not None:
        gauges.append(metrics.LAG_SLO_MESSAGES(slo.max_messages, labels))
        gauges.append(metrics.LAG_SLO_SECONDS(slo.max_seconds, labels))
    return gauges
