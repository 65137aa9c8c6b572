"""A replicated table's health, measured now: what the ``replication_checks`` job observes.

One :func:`measure` per table reads, each call bounded by a timeout and each failure kept
as a reason instead of raised: consumer lag (a fresh sample, with the Burrow status of the
``consumer_lag`` sensor's window when it observed lately), the sink connector's and its
tasks' state, the dead-letter queue's depth, both row counts (exact when cheap) and the
latest reconciliation verdict of every token slice, summed. :func:`observations` turns it
into the metadata of one observation per asset (numbers the UI plots over time), and the
table's replication checks are evaluated against the same :class:`TableHealth`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.defs.resources import (
    KafkaConnectResource,
    KafkaResource,
    PostgresResource,
    ScyllaResource,
)
from cdc_pipelines.errors import CdcPipelinesError, redact_secrets
from cdc_pipelines.kafka import lag
from cdc_pipelines.kafka.lag_sampler import ConsumerTarget
from cdc_pipelines.quality.counts import RowCount, source_row_count, target_row_count
from cdc_pipelines.reconcile.report import Tally

HEALTH_OBSERVER = "replication_health"
"""The ``observed_by`` value of the observations the health step records."""
LAG_OBSERVER = "consumer_lag_sensor"
"""The ``observed_by`` value of the lag sensor's observations."""
KAFKA_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
OBSERVATIONS_SCANNED = 50
"""Recent observations searched for the lag sensor's latest (other observers write too)."""
LAG_STATUS_FRESH_S = 120.0
"""A lag-sensor status at most this old is current: its window of samples shows the trend."""
TALLIED = ("missing", "extra", "mismatched", "target_ahead", "in_flight")
"""The verdicts a slice's materialization records, summed over the table."""
SINK_MISSING = "MISSING"
SINK_UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class LagObservation:
    """The lag sensor's latest word on a table."""

    observed_at: float
    lag_messages: int
    lag_seconds: float | None
    status: str
    samples: int = 0

    @property
    def replicated_as_of(self) -> float:
        """PostgreSQL reflects the source as of this time (caught up: the observation time)."""
        return self.observed_at - (self.lag_seconds or 0.0)


def latest_lag_observation(instance: dg.DagsterInstance, key: dg.AssetKey) -> LagObservation | None:
    """The ``consumer_lag`` sensor's most recent observation of ``key``, if any."""
    records = instance.fetch_observations(key, limit=OBSERVATIONS_SCANNED).records
    for record in records:
        observation = record.asset_observation
        if observation is None:
            continue
        metadata = observation.metadata
        if _value(metadata.get("observed_by"), None) != LAG_OBSERVER:
            continue
        seconds = _value(metadata.get("lag_seconds"), None)
        return LagObservation(
            observed_at=record.timestamp,
            lag_messages=int(_value(metadata.get("lag_messages"), 0)),
            lag_seconds=None if seconds is None else float(seconds),
            status=str(_value(metadata.get("lag_status"), "unknown")),
            samples=int(_value(metadata.get("samples_in_window"), 0)),
        )
    return None


def _value(entry: dg.MetadataValue | None, default: Any) -> Any:
    return default if entry is None or entry.value is None else entry.value


@dataclass(frozen=True)
class LagReading:
    """The sink's consumer lag now; ``problem`` says why the numbers are unknown."""

    lag_messages: int | None = None
    lag_seconds: float | None = None
    lag_seconds_is_lower_bound: bool = False
    status: str = "unknown"
    status_from: str = ""
    end_offsets: int | None = None
    retained_messages: int | None = None
    newest_message_ms: int | None = None
    problem: str | None = None
    kafka_answered: bool = True

    @property
    def severity(self) -> int | None:
        """Burrow's status as a number the UI can plot: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP."""
        try:
            return lag.LagStatus(self.status).severity
        except ValueError:
            return None


@dataclass(frozen=True)
class SinkReading:
    """The sink connector's state and its tasks' (``MISSING``, ``UNREACHABLE`` when unread)."""

    connector: str
    state: str
    tasks: int = 0
    tasks_running: int = 0
    tasks_failed: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class SliceVerdicts:
    """The latest reconciliation of each current token slice, summed over the table."""

    slice_count: int
    slices_reconciled: int = 0
    tally: Tally = field(default_factory=Tally)  # by kind, summed (``resolved`` not kept)
    rows_compared: int = 0
    last_reconciled_at: float | None = None
    disagreeing_slices: tuple[str, ...] = ()  # partition keys whose slice differs
    unsure_slices: tuple[str, ...] = ()  # … of those, the ones whose catch-up was unconfirmed

    @property
    def rate(self) -> float:
        if self.rows_compared:
            return self.tally.disagreeing / self.rows_compared
        return 1.0 if self.tally.disagreeing else 0.0


@dataclass(frozen=True)
class TableHealth:
    """Everything the health step measured about one table, at ``observed_at``."""

    observed_at: float
    lag: LagReading
    sink: SinkReading
    dlq_topic: str
    dlq_depth: int | None
    source_rows: RowCount
    target_rows: RowCount
    verdicts: SliceVerdicts
    recent_lag: LagObservation | None = None  # the lag sensor's latest, whatever its age
    dlq_problem: str | None = None

    @property
    def replicated_as_of(self) -> float | None:
        """PostgreSQL reflects the source as of this time, when the time lag is known."""
        if self.lag.lag_messages == 0:
            return self.observed_at
        if self.lag.lag_seconds is None:
            return None
        return self.observed_at - self.lag.lag_seconds

    @property
    def problems(self) -> tuple[str, ...]:
        found = [self.lag.problem, self.sink.problem, self.dlq_problem]
        for side, count in (("source", self.source_rows), ("target", self.target_rows)):
            if count.rows is None:
                found.append(f"{side} rows unknown: {count.method}")
        return tuple(p for p in found if p)


def measure(
    names: TableNames,
    instance: dg.DagsterInstance,
    scylla: ScyllaResource,
    postgres: PostgresResource,
    kafka: KafkaResource,
    kafka_connect: KafkaConnectResource,
) -> TableHealth:
    """Measure one table now; a system that does not answer in time leaves its part unknown."""
    now = time.time()
    recent = latest_lag_observation(instance, names.postgres_key)
    reading = measure_lag(names, kafka, recent, now)
    dlq_depth, dlq_problem = (
        _dlq_depth(names, kafka) if reading.kafka_answered else (None, "Kafka did not answer")
    )
    return TableHealth(
        observed_at=now,
        lag=reading,
        sink=measure_sink(names, kafka_connect),
        dlq_topic=names.dlq_topic,
        dlq_depth=dlq_depth,
        dlq_problem=dlq_problem,
        source_rows=_source_rows(names, scylla),
        target_rows=_target_rows(names, postgres),
        verdicts=latest_verdicts(instance, names),
        recent_lag=recent,
    )


def measure_lag(
    names: TableNames, kafka: KafkaResource, recent: LagObservation | None, now: float
) -> LagReading:
    """The lag now, from one fresh sample; the Burrow status from the lag sensor's window when
    it observed within :data:`LAG_STATUS_FRESH_S` (a single sample shows no trend)."""
    now_ms = int(now * 1000)
    try:
        (sample,) = kafka.lag_sampler(KAFKA_TIMEOUT_S).sample(
            [ConsumerTarget(names.consumer_group, names.topic)], now_ms
        )
    except CdcPipelinesError as exc:
        return LagReading(problem=str(exc), kafka_answered=False)
    if not sample.topic_exists:
        return LagReading(
            problem=f"topic {names.topic!r} does not exist: nothing is streamed for {names.source}"
        )
    evaluation = lag.evaluate(lag.LagWindow((sample.tick,)), now_ms)
    partitions = sample.tick.partitions.values()
    if recent is not None and now - recent.observed_at <= LAG_STATUS_FRESH_S:
        status = recent.status
        status_from = (
            f"the consumer_lag sensor's window of {recent.samples} samples, "
            f"{now - recent.observed_at:.0f}s ago"
        )
    else:
        status = evaluation.status.value
        status_from = "one sample (the consumer_lag sensor has not observed lately: no trend)"
    newest = max((p.end_timestamp_ms or 0 for p in partitions), default=0)
    return LagReading(
        lag_messages=evaluation.lag_messages,
        lag_seconds=evaluation.time_lag_s,
        lag_seconds_is_lower_bound=evaluation.time_lag_is_lower_bound,
        status=status,
        status_from=status_from,
        end_offsets=sum(p.log_end for p in partitions),
        retained_messages=sum(p.log_end - p.log_start for p in partitions),
        newest_message_ms=newest or None,
        problem="; ".join(sample.problems) or None,
    )


def measure_sink(names: TableNames, kafka_connect: KafkaConnectResource) -> SinkReading:
    try:
        status = kafka_connect.client(timeout_s=CONNECT_TIMEOUT_S, retries=0).status_if_exists(
            names.sink
        )
    except CdcPipelinesError as exc:
        return SinkReading(names.sink, SINK_UNREACHABLE, problem=str(exc))
    if status is None:
        return SinkReading(
            names.sink,
            SINK_MISSING,
            problem=f"sink connector {names.sink} does not exist ('cdc-pipelines connectors apply')",
        )
    failed = len(status.failed_tasks)
    return SinkReading(
        names.sink,
        status.state,
        tasks=len(status.tasks),
        tasks_running=sum(t.state == "RUNNING" for t in status.tasks),
        tasks_failed=failed,
        problem=(
            None
            if status.healthy
            else f"sink {names.sink} is {status.state} with {failed} failed task(s)"
        ),
    )


def _dlq_depth(names: TableNames, kafka: KafkaResource) -> tuple[int | None, str | None]:
    try:
        return kafka.dlq_reader(KAFKA_TIMEOUT_S).snapshot([names.dlq_topic]).depth(), None
    except CdcPipelinesError as exc:
        return None, str(exc)


def _source_rows(names: TableNames, scylla: ScyllaResource) -> RowCount:
    try:
        with scylla.session(names.table.scylla) as session:
            return source_row_count(session, names.spec)
    except Exception as exc:  # the driver raises many unrelated types; the count is optional
        return RowCount(None, exact=False, method=redact_secrets(f"{type(exc).__name__}: {exc}"))


def _target_rows(names: TableNames, postgres: PostgresResource) -> RowCount:
    try:
        with postgres.connection() as conn:
            return target_row_count(conn, names.spec.target_schema, names.spec.target_table)
    except Exception as exc:  # psycopg errors, pool timeouts, a missing table
        return RowCount(None, exact=False, method=redact_secrets(f"{type(exc).__name__}: {exc}"))


def latest_verdicts(instance: dg.DagsterInstance, names: TableNames) -> SliceVerdicts:
    """The latest materialization of each current slice of the reconciliation, summed.

    Partitions of another slice count (an older declaration) are not current and left out.
    """
    key = names.reconciliation_key
    storage_ids = instance.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(names.slices)
    )
    if not storage_ids:
        return SliceVerdicts(names.slice_count)
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(storage_ids.values())),
        limit=len(storage_ids),
    ).records
    latest: dict[str, tuple[float, Mapping[str, dg.MetadataValue]]] = {}
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.partition is not None:
            latest[materialization.partition] = (record.timestamp, materialization.metadata)
    total = Tally()
    rows = 0
    disagreeing: list[str] = []
    unsure: list[str] = []
    for partition, (_, metadata) in latest.items():
        tally = Tally(**{kind: int(_value(metadata.get(kind), 0)) for kind in TALLIED})
        total += tally
        rows += max(
            int(_value(metadata.get("source_rows"), 0)), int(_value(metadata.get("target_rows"), 0))
        )
        confirmed = bool(_value(metadata.get("catch_up_confirmed"), True))
        if tally.disagreeing:
            disagreeing.append(partition)
        if not confirmed and tally.disagreeing + tally.in_flight:
            unsure.append(partition)
    order = {p: i for i, p in enumerate(names.slices)}
    return SliceVerdicts(
        slice_count=names.slice_count,
        slices_reconciled=len(latest),
        rows_compared=rows,
        last_reconciled_at=max((t for t, _ in latest.values()), default=None),
        disagreeing_slices=tuple(sorted(disagreeing, key=order.__getitem__)),
        unsure_slices=tuple(sorted(unsure, key=order.__getitem__)),
        tally=total,
    )


@dataclass(frozen=True)
class HealthObservations:
    """The metadata of one observation per asset of the table."""

    source: dict[str, Any]
    topic: dict[str, Any]
    target: dict[str, Any]


def observations(names: TableNames, health: TableHealth) -> HealthObservations:
    """Numbers first (the UI plots every numeric entry over time), then what explains them."""
    reading, sink, verdicts = health.lag, health.sink, health.verdicts
    source_count: dict[str, Any] = {"observed_by": HEALTH_OBSERVER}
    _rows_into(source_count, "source_rows", health.source_rows)

    topic: dict[str, Any] = {"observed_by": HEALTH_OBSERVER, "topic": names.topic}
    if reading.end_offsets is not None:
        topic["end_offsets"] = dg.MetadataValue.int(reading.end_offsets)
    if reading.retained_messages is not None:
        topic["retained_messages"] = dg.MetadataValue.int(reading.retained_messages)
    if reading.newest_message_ms is not None:
        topic["newest_message_at"] = dg.MetadataValue.timestamp(reading.newest_message_ms / 1000)
    if health.dlq_depth is not None:
        topic["dlq_depth"] = dg.MetadataValue.int(health.dlq_depth)
    topic["dead_letter_topic"] = health.dlq_topic

    target: dict[str, Any] = {"observed_by": HEALTH_OBSERVER}
    if reading.lag_messages is not None:
        target["lag_messages"] = dg.MetadataValue.int(reading.lag_messages)
    if reading.lag_seconds is not None:
        target["lag_seconds"] = dg.MetadataValue.float(round(reading.lag_seconds, 3))
    target["lag_status"] = reading.status
    if reading.severity is not None:
        target["lag_status_severity"] = dg.MetadataValue.int(reading.severity)
    _rows_into(target, "source_rows", health.source_rows)
    _rows_into(target, "target_rows", health.target_rows)
    if health.source_rows.rows is not None and health.target_rows.rows is not None:
        target["row_difference"] = dg.MetadataValue.int(
            health.source_rows.rows - health.target_rows.rows
        )
    if health.dlq_depth is not None:
        target["dlq_depth"] = dg.MetadataValue.int(health.dlq_depth)
    target["tasks_running"] = dg.MetadataValue.int(sink.tasks_running)
    target["tasks_failed"] = dg.MetadataValue.int(sink.tasks_failed)
    if verdicts.slices_reconciled:
        target.update(
            {
                **{kind: dg.MetadataValue.int(getattr(verdicts.tally, kind)) for kind in TALLIED},
                "discrepancies": dg.MetadataValue.int(verdicts.tally.confirmed),
                "slices_reconciled": dg.MetadataValue.int(verdicts.slices_reconciled),
            }
        )
        if verdicts.last_reconciled_at is not None:
            target["last_reconciled_at"] = dg.MetadataValue.timestamp(verdicts.last_reconciled_at)
    target["sink_connector"] = sink.connector
    target["sink_state"] = sink.state
    target["lag_status_from"] = reading.status_from or "not measured"
    if reading.lag_seconds_is_lower_bound:
        target["lag_seconds_is_lower_bound"] = True
    if health.problems:
        target["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in health.problems))
    return HealthObservations(source=source_count, topic=topic, target=target)


def _rows_into(metadata: dict[str, Any], label: str, count: RowCount) -> None:
    if count.rows is not None:
        metadata[label] = dg.MetadataValue.int(count.rows)
    metadata[f"{label}_counted_by"] = count.method
