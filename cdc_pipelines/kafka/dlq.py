"""Dead-letter queues: their depth, what arrived since last time, and which table it came from.

Kafka Connect writes a record it could not convert or transform to the sink's DLQ
topic with ``__connect.errors.*`` context headers; ``__connect.errors.topic`` names the
topic the record came from, which maps back to a declared table.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.lag_sampler import admin_client

DEFAULT_TIMEOUT_S = 10.0
MAX_RECORDS_PER_READ = 500
"""At most this many new DLQ records are read per call; the rest are counted, not read."""
CONSUME_BATCH = 100
ERROR_TEXT_LIMIT = 300
HEADER_TOPIC = "__connect.errors.topic"
HEADER_PARTITION = "__connect.errors.partition"
HEADER_OFFSET = "__connect.errors.offset"
HEADER_CONNECTOR = "__connect.errors.connector.name"
HEADER_STAGE = "__connect.errors.stage"
HEADER_EXCEPTION = "__connect.errors.exception.class.name"
HEADER_MESSAGE = "__connect.errors.exception.message"
INSPECTOR_GROUP_PREFIX = "cdc-pipelines-dlq-inspector"

PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class PartitionRange:
    """A DLQ partition's retained offsets ``[start, end)``."""

    start: int
    end: int

    @property
    def depth(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class DlqSnapshot:
    """Retained offsets of every partition of some DLQ topics; missing topics are absent."""

    partitions: Mapping[PartitionKey, PartitionRange]

    def depth(self, topic: str | None = None) -> int:
        return sum(r.depth for (t, _), r in self.partitions.items() if topic is None or t == topic)

    def topics(self) -> set[str]:
        return {t for t, _ in self.partitions}


@dataclass(frozen=True)
class DlqRecord:
    """One dead-lettered record and the context Connect attached to it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    source_topic: str | None
    source_partition: int | None
    source_offset: int | None
    connector: str | None
    stage: str | None
    exception: str | None
    message: str | None


def new_ranges(
    snapshot: DlqSnapshot, seen: Mapping[PartitionKey, int]
) -> dict[PartitionKey, PartitionRange]:
    """What arrived since ``seen`` (the end offsets of the previous look), per partition.

    A partition never seen before counts from its log start; a log start beyond the
    seen offset (retention deleted records) counts from the log start.
    """
    growth = {}
    for key, current in snapshot.partitions.items():
        start = max(seen.get(key, current.start), current.start)
        if current.end > start:
            growth[key] = PartitionRange(start, current.end)
    return growth


class DlqReader:
    """Reads DLQ offsets and records; one client per call, every call bounded by ``timeout_s``."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s

    def snapshot(self, topics: Sequence[str]) -> DlqSnapshot:
        """Log start and end of every partition of the existing ``topics``."""
        admin = admin_client(self.bootstrap_servers, self.timeout_s)
        try:
            metadata = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise ServiceError(
                f"Kafka at {self.bootstrap_servers} did not answer within {self.timeout_s:.0f}s "
                f"({exc}); check CDC_KAFKA_BOOTSTRAP_SERVERS"
            ) from None
        tps = [
            TopicPartition(topic, p)
            for topic in sorted(set(topics))
            if topic in metadata.topics
            for p in sorted(metadata.topics[topic].partitions)
        ]
        if not tps:
            return DlqSnapshot({})
        deadline = time.monotonic() + self.timeout_s
        ends = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in tps}, request_timeout=self.timeout_s
        )
        starts = admin.list_offsets(
            {tp: OffsetSpec.earliest() for tp in tps}, request_timeout=self.timeout_s
        )
        ranges = {}
        try:
            for tp in tps:
                end = ends[tp].result(timeout=max(0.01, deadline - time.monotonic())).offset
                start = starts[tp].result(timeout=max(0.01, deadline - time.monotonic())).offset
                ranges[(tp.topic, tp.partition)] = PartitionRange(int(start), int(end))
        except Exception as exc:  # KafkaException or a timeout: the snapshot would be partial
            raise ServiceError(
                f"Kafka at {self.bootstrap_servers} did not report the offsets of the DLQ topics "
                f"within {self.timeout_s:.0f}s: {type(exc).__name__}: {exc}"
            ) from None
        return DlqSnapshot(ranges)

    def read(
        self, ranges: Mapping[PartitionKey, PartitionRange], limit: int = MAX_RECORDS_PER_READ
    ) -> list[DlqRecord]:
        """Up to ``limit`` records of ``ranges`` (oldest first, shared fairly between partitions).

        Reads with a throw-away group that never commits, so inspecting a DLQ does not
        move anybody's offsets; stops at ``timeout_s`` with what it has.
        """
        wanted = {key: r for key, r in ranges.items() if r.end > r.start}
        if not wanted:
            return []
        budget = _split_budget(wanted, limit)
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"{INSPECTOR_GROUP_PREFIX}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Records deleted by retention meanwhile: start at what is left, and
                # report the end of a partition so the read does not wait for more.
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "socket.timeout.ms": str(int(self.timeout_s * 1000)),
            }
        )
        records: list[DlqRecord] = []
        stop_at = {key: r.start + budget[key] for key, r in wanted.items() if budget[key] > 0}
        try:
            consumer.assign([TopicPartition(t, p, wanted[(t, p)].start) for (t, p) in stop_at])
            deadline = time.monotonic() + self.timeout_s
            pending = dict(stop_at)
            while pending and time.monotonic() < deadline:
                batch = consumer.consume(
                    CONSUME_BATCH, timeout=min(1.0, max(0.01, deadline - time.monotonic()))
                )
                for message in batch:
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.pop((message.topic() or "", message.partition() or 0), None)
                            continue
                        raise ServiceError(f"reading the DLQ failed: {error}")
                    record = _record(message)
                    key = (record.topic, record.partition)
                    if key not in pending or record.offset >= pending[key]:
                        continue
                    records.append(record)
                    if record.offset + 1 >= pending[key]:
                        del pending[key]
        finally:
            consumer.close()
        return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def _split_budget(
    ranges: Mapping[PartitionKey, PartitionRange], limit: int
) -> dict[PartitionKey, int]:
    # Every partition gets a fair share of the read limit, oldest records first.
    budget = dict.fromkeys(ranges, 0)
    remaining = limit
    keys = sorted(ranges)
    while remaining > 0:
        progressed = False
        for key in keys:
            if remaining and budget[key] < ranges[key].depth:
                budget[key] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return budget


def _record(message: Message) -> DlqRecord:
    headers = dict(message.headers() or [])
    kind, stamp = message.timestamp()
    return DlqRecord(
        topic=message.topic() or "",
        partition=_or_minus_one(message.partition()),
        offset=_or_minus_one(message.offset()),
        timestamp_ms=stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None,
        source_topic=_text(headers.get(HEADER_TOPIC)),
        source_partition=_int(headers.get(HEADER_PARTITION)),
        source_offset=_int(headers.get(HEADER_OFFSET)),
        connector=_text(headers.get(HEADER_CONNECTOR)),
        stage=_text(headers.get(HEADER_STAGE)),
        exception=_text(headers.get(HEADER_EXCEPTION)),
        message=_text(headers.get(HEADER_MESSAGE), ERROR_TEXT_LIMIT),
    )


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


def _text(value: bytes | str | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if limit is None else text[:limit]


def _int(value: bytes | str | None) -> int | None:
    text = _text(value)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def attribute(
    records: Sequence[DlqRecord],
    table_by_topic: Mapping[str, str],
    table_by_dlq_topic: Mapping[str, str],
) -> dict[str, list[DlqRecord]]:
    """Group records by declared table: by their source-topic header, else by their DLQ topic.

    Records that match neither are grouped under ``""`` so they are still counted.
    """
    by_table: dict[str, list[DlqRecord]] = {}
    for record in records:
        table = table_by_topic.get(record.source_topic or "") or table_by_dlq_topic.get(
            record.topic, ""
        )
        by_table.setdefault(table, []).append(record)
    return by_table
