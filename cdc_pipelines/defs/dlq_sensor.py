"""The dead-letter-queue sensor: reconcile the tables whose change events were dead-lettered.

The cursor holds the DLQ end offsets seen last; new records are read (a bounded number
per tick) and attributed to their table from Connect's context headers.
"""

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from cdc_pipelines.defs.names import REASON_DLQ, AssetJob, TableNames
from cdc_pipelines.defs.resources import KafkaResource, PushgatewayResource
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.kafka.dlq import DlqRecord, DlqSnapshot, PartitionRange, attribute, new_ranges
from cdc_pipelines.observability import metrics

DLQ_INTERVAL_S = 60
KAFKA_CALL_TIMEOUT_S = 15.0
CURSOR_VERSION = 1


def _load_seen(cursor: str | None) -> dict[tuple[str, int], int] | None:
    try:
        data = json.loads(cursor) if cursor else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
        return None
    seen = {}
    for key, end in (data.get("seen") or {}).items():
        topic, _, partition = str(key).rpartition("|")
        if topic and partition.isdigit():
            seen[(topic, int(partition))] = int(end)
    return seen


def _dump_seen(seen: Mapping[tuple[str, int], int]) -> str:
    return json.dumps(
        {"v": CURSOR_VERSION, "seen": {f"{t}|{p}": seen[(t, p)] for t, p in sorted(seen)}},
        separators=(",", ":"),
    )


def make_dlq_sensor(
    tables: Sequence[TableNames],
    shared_dlq_topic: str | None,
    jobs: Sequence["AssetJob"],
    minimum_interval_seconds: int = DLQ_INTERVAL_S,
) -> dg.SensorDefinition:
    """Reconcile the tables whose change events landed in a dead-letter queue.

    Each tick reads the DLQ topics' offsets (every table's ``<dlq>.<ks>.<t>`` and the
    shared ``<dlq>`` topic), reads the records that arrived since the offsets in the
    cursor (at most a few hundred per tick) and attributes each to its table from the
    ``__connect.errors.topic`` header, else from the DLQ topic's name. Each table with
    new dead letters gets one reconciliation whose run key names the offsets. The first
    tick only records where the queues are: letters older than the sensor were either
    handled already or will be found by the nightly reconciliation.
    """
    by_topic = {n.topic: n for n in tables}
    by_dlq_topic = {n.dlq_topic: n for n in tables}
    by_source = {n.source: n for n in tables}
    topics = sorted({*by_dlq_topic, *([shared_dlq_topic] if shared_dlq_topic else [])})

    @dg.sensor(
        name="dead_letter_queue",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=list(jobs),
        description=inspect.cleandoc(make_dlq_sensor.__doc__ or ""),
    )
    def dead_letter_queue(
        context: dg.SensorEvaluationContext,
        kafka: KafkaResource,
        pushgateway: PushgatewayResource,
    ) -> dg.SensorResult:
        reader = kafka.dlq_reader(KAFKA_CALL_TIMEOUT_S)
        snapshot = reader.snapshot(topics)
        seen = _load_seen(context.cursor)
        ends = {key: r.end for key, r in snapshot.partitions.items()}
        requests: list[dg.RunRequest] = []
        new_by_table: dict[str, list[DlqRecord]] = {}
        growth: dict[tuple[str, int], PartitionRange] = {}
        if seen is None:
            context.log.info(f"first tick: DLQ depth {snapshot.depth()} recorded as the baseline")
        else:
            growth = new_ranges(snapshot, seen)
            records = reader.read(growth)
            new_by_table = attribute(
                records,
                {t: n.source for t, n in by_topic.items()},
                {t: n.source for t, n in by_dlq_topic.items()},
            )
            unread = sum(r.depth for r in growth.values()) - len(records)
            if unread > 0:
                context.log.warning(f"{unread} new dead letters not read this tick (read limit)")
            for source, table_records in sorted(new_by_table.items()):
                names = by_source.get(source)
                if names is None:
                    context.log.warning(
                        f"{len(table_records)} dead letters from unknown topics: "
                        f"{sorted({r.source_topic or '?' for r in table_records})}"
                    )
                    continue
                ranges = _ranges_of(table_records)
                context.log.info(
                    f"{len(table_records)} dead letters of {source} ({ranges}); requesting a reconciliation"
                )
                requests.append(
                    names.reconcile_request(
                        REASON_DLQ,
                        f"{len(table_records)} dead letters: {ranges}",
                        f"{REASON_DLQ}:{source}:{ranges}",
                    )
                )
        events = [
            dg.AssetObservation(
                asset_key=names.kafka_key,
                metadata=_dlq_metadata(
                    names, snapshot.depth(names.dlq_topic), new_by_table.get(names.source, [])
                ),
            )
            for names in tables
        ]
        try:
            pushgateway.push_per_table(
                metrics.DLQ_JOB,
                _dlq_gauges(tables, shared_dlq_topic, snapshot),
                also=("dlq_topic",),
            )
        except CdcPipelinesError as exc:
            context.log.warning(f"dead-letter metrics not pushed: {exc}")
        skip = None
        if not requests:
            skip = dg.SkipReason(
                f"dead-letter depth of {len(tables)} table(s) observed "
                f"({snapshot.depth()} letters in all); nothing new to reconcile"
            )
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=_dump_seen(ends),
            skip_reason=skip,
        )

    return dead_letter_queue


def _dlq_gauges(
    tables: Sequence[TableNames], shared_dlq_topic: str | None, snapshot: DlqSnapshot
) -> list[metrics.Gauge]:
    """Depth and summed end offsets of each table's DLQ topic, and of the shared one under
    ``table=""``; 0 while a topic does not exist, so that its first letters show as growth."""
    topics = [(n.source, n.dlq_topic) for n in tables]
    if shared_dlq_topic:
        topics.append(("", shared_dlq_topic))
    gauges = []
    for table, topic in topics:
        labels = {"table": table, "dlq_topic": topic}
        end = sum(r.end for (t, _), r in snapshot.partitions.items() if t == topic)
        gauges.append(metrics.DLQ_DEPTH(snapshot.depth(topic), labels))
        gauges.append(metrics.DLQ_END_OFFSET(end, labels))
    return gauges


def _ranges_of(records: Sequence[DlqRecord]) -> str:
    spans: dict[tuple[str, int], list[int]] = {}
    for record in records:
        spans.setdefault((record.topic, record.partition), []).append(record.offset)
    return ",".join(f"{t}/{p}@{min(o)}-{max(o)}" for (t, p), o in sorted(spans.items()))


def _dlq_metadata(names: TableNames, depth: int, new: Sequence[DlqRecord]) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "observed_by": "dead_letter_queue_sensor",
        "dlq_topic": names.dlq_topic,
        "dlq_depth": dg.MetadataValue.int(depth),
        "dlq_new_messages": dg.MetadataValue.int(len(new)),
    }
    if new:
        last = new[-1]
        metadata["last_error"] = f"{last.exception or '?'}: {last.message or ''}".strip()
        metadata["last_error_stage"] = last.stage or "?"
    return metadata
