"""The version guard of a dead-letter replay: skip a letter a newer change of its key replaced.

The sink upserts and deletes without comparing versions, so re-publishing a dead letter
after a newer change of the same key was applied would bring the older row back. Within one
partition of the table's topic a key's changes are in order, so a letter is *superseded*
when the topic holds a change of its key at a later position than the letter's own change.

A letter's position is where its change sat in the table's topic: Connect's
``__connect.errors.partition``/``offset`` headers, or, for a replayed record that failed
again, the :data:`ORIGIN_HEADER` a replay adds. A replayed copy in the topic takes its
origin's position too, so a replay never counts as a change newer than the one it copies.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.dlq import (
    CONSUME_BATCH,
    HEADER_OFFSET,
    HEADER_PARTITION,
    DlqReader,
)
from cdc_pipelines.kafka.lag_sampler import LIBRDKAFKA_LOG

ORIGIN_HEADER = "cdc-pipelines.replayed-origin"
"""Added to every replayed record: ``<partition>/<offset>`` of its change in the table's topic."""

Header = tuple[str, bytes | None]


@dataclass(frozen=True, order=True)
class Position:
    """Where a change sits in the table's topic."""

    partition: int
    offset: int

    def encode(self) -> bytes:
        return f"{self.partition}/{self.offset}".encode()


def _last(headers: Iterable[Header], name: str) -> str | None:
    found = None
    for key, value in headers:
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


def origin_of(headers: Iterable[Header]) -> Position | None:
    """A record's change position: its replay origin, or Connect's error context (None when
    neither is there, e.g. a DLQ written without context headers)."""
    headers = tuple(headers)
    origin = _last(headers, ORIGIN_HEADER)
    try:
        if origin is not None:
            partition, _, offset = origin.partition("/")
            return Position(int(partition), int(offset))
        partition_text, offset_text = (
            _last(headers, HEADER_PARTITION),
            _last(headers, HEADER_OFFSET),
        )
        if partition_text is None or offset_text is None:
            return None
        return Position(int(partition_text), int(offset_text))
    except ValueError:
        return None


def newest_changes(
    bootstrap_servers: str,
    topic: str,
    wanted: Mapping[int, Mapping[bytes | None, int]],
    timeout_s: float,
) -> dict[tuple[int, bytes | None], int]:
    """The latest position of each wanted key in ``topic``: ``wanted`` maps a partition to
    its keys and the oldest position to look from. Reads each partition from there to its
    end at the time of the call; a replayed copy counts at its origin's position."""
    snapshot = DlqReader(bootstrap_servers, timeout_s).snapshot([topic])
    ends = {partition: r.end for (_, partition), r in snapshot.partitions.items()}
    pending = {
        partition: ends[partition]
        for partition, keys in wanted.items()
        if keys and ends.get(partition, 0) > min(keys.values())
    }
    newest: dict[tuple[int, bytes | None], int] = {}
    if not pending:
        return newest
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            # Assigned, never subscribed or committed: a throwaway group.
            "group.id": f"cdc-pipelines-replay-guard-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            # An origin older than the log's start: read from the start, never skip to the end.
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "socket.timeout.ms": str(int(timeout_s * 1000)),
            "logger": LIBRDKAFKA_LOG,
        }
    )
    try:
        consumer.assign(
            [TopicPartition(topic, p, min(wanted[p].values())) for p in sorted(pending)]
        )
        idle_until = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > idle_until:
                raise ServiceError(
                    f"reading {topic} from Kafka at {bootstrap_servers} to check the dead "
                    f"letters against newer changes stalled for {timeout_s:.0f}s; nothing was "
                    "replayed past the last commit: rerun the replay"
                )
            for message in consumer.consume(CONSUME_BATCH, timeout=1.0):
                partition = message.partition() or 0
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.pop(partition, None)
                        continue
                    raise ServiceError(f"reading {topic} failed: {error}")
                idle_until = time.monotonic() + timeout_s
                offset = message.offset() or 0
                if partition not in pending or offset >= pending[partition]:
                    continue
                key = message.key()
                if key is not None and key in wanted[partition]:
                    headers = message.headers() or []
                    origin = origin_of(
                        (str(k), v if isinstance(v, bytes) else None)
                        for k, v in (headers.items() if isinstance(headers, dict) else headers)
                    )
                    same = origin is not None and origin.partition == partition
                    position = origin.offset if origin is not None and same else offset
                    slot = (partition, key)
                    newest[slot] = max(newest.get(slot, -1), position)
                if offset + 1 >= pending[partition]:
                    del pending[partition]
    finally:
        consumer.close()
    return newest
