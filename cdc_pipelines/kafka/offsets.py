"""Kafka offsets for lag-aware verification: where a topic ends and how far a group has read.

A reconciliation records the topic's end offsets when it scans; before verifying, it waits
until the sink's consumer group (``connect-<sink name>``) has committed past them, so every
change the scan could have seen has reached PostgreSQL. Without Kafka it waits a settle window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.lag_sampler import admin_client

log = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT_S = 10.0
# A topic watch answers "cannot tell" sooner: the check it would skip then simply runs.
WATCH_TIMEOUT_S = 3.0
DEFAULT_POLL_INTERVAL_S = 1.0
# Without Kafka, wait this long for in-flight changes: the source connector's confidence
# window (30 s by default) plus the sink's offset flush interval (60 s by default) bound it.
DEFAULT_SETTLE_WINDOW_S = 90.0
OFFSET_INVALID = -1001  # librdkafka: the group has committed nothing for the partition
SINK_GROUP_PREFIX = "connect-"


def sink_group(connector_name: str) -> str:
    """Kafka Connect's consumer group of a sink connector."""
    return f"{SINK_GROUP_PREFIX}{connector_name}"


def _unreachable(bootstrap: str, what: str, exc: BaseException) -> ServiceError:
    return ServiceError(
        f"Kafka at {bootstrap}: cannot read {what}: {exc}; check CDC_KAFKA_BOOTSTRAP_SERVERS "
        "and that the brokers are up"
    )


def _partitions(admin: AdminClient, bootstrap: str, topic: str, timeout_s: float) -> list[int]:
    try:
        # All topics, not list_topics(topic=…): asking for one by name makes a broker with
        # auto.create.topics.enable create it.
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise _unreachable(bootstrap, f"the metadata of topic {topic!r}", exc) from None
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        reason = described.error if described is not None else "not listed"
        raise ServiceError(
            f"Kafka at {bootstrap}: topic {topic!r} does not exist ({reason}); check the "
            "topic prefix in the declaration and that the source connector is running"
        )
    return sorted(described.partitions)


def _end_offsets(
    admin: AdminClient, bootstrap: str, topic: str, timeout_s: float
) -> dict[int, int]:
    partitions = _partitions(admin, bootstrap, topic, timeout_s)
    request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
    try:
        futures = admin.list_offsets(request, request_timeout=timeout_s)
        return {tp.partition: int(f.result(timeout=timeout_s).offset) for tp, f in futures.items()}
    except Exception as exc:  # KafkaException, or a future's timeout
        raise _unreachable(bootstrap, f"the end offsets of topic {topic!r}", exc) from None


def _committed(
    admin: AdminClient, bootstrap: str, group: str, topic: str, timeout_s: float
) -> dict[int, int | None]:
    partitions = _partitions(admin, bootstrap, topic, timeout_s)
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])]
    try:
        futures = admin.list_consumer_group_offsets(request, request_timeout=timeout_s)
        answer: Any = futures[group].result(timeout=timeout_s)
    except Exception as exc:  # KafkaException, or a future's timeout
        raise _unreachable(
            bootstrap, f"group {group!r}'s offsets on topic {topic!r}", exc
        ) from None
    committed: dict[int, int | None] = dict.fromkeys(partitions)
    for tp in answer.topic_partitions:
        if tp.error is not None:
            raise ServiceError(
                f"Kafka at {bootstrap}: group {group!r}, partition {topic}[{tp.partition}]: "
                f"{tp.error}"
            )
        committed[tp.partition] = None if tp.offset < 0 else int(tp.offset)
    return committed


def end_offsets(
    bootstrap: str, topic: str, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
) -> dict[int, int]:
    """The next offset to be written, per partition (what a scan records as its targets)."""
    return _end_offsets(admin_client(bootstrap, timeout_s), bootstrap, topic, timeout_s)


def committed_offsets(
    bootstrap: str, group: str, topic: str, *, timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
) -> dict[int, int | None]:
    """The group's committed offset per partition of ``topic`` (None: nothing committed)."""
    return _committed(admin_client(bootstrap, timeout_s), bootstrap, group, topic, timeout_s)


class TopicWatch:
    """Tells whether anything was written to a topic since a mark (its end offsets then).

    Repair uses it to skip re-checking the source after a commit: the sink applies only
    what the topic holds, so a topic that gained nothing since the rows were read carried
    no delete the sink could have applied before the repair's rows landed.
    """

    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = WATCH_TIMEOUT_S) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._admin: AdminClient | None = None
        self._moved = False  # offsets only grow: once moved, every later answer is "moved"

    def mark(self) -> dict[int, int] | None:
        """The topic's end offsets now; None when Kafka cannot tell."""
        try:
            if self._admin is None:
                self._admin = admin_client(self.bootstrap, self.timeout_s)
            return _end_offsets(self._admin, self.bootstrap, self.topic, self.timeout_s)
        except Exception as exc:  # any failure means "cannot tell": the check then runs
            log.info("topic %s: end offsets unknown (%s: %s)", self.topic, type(exc).__name__, exc)
            return None

    def unchanged_since(self, mark: Mapping[int, int] | None) -> bool:
        """Whether the topic's end offsets are still ``mark`` (False when unknown)."""
        if mark is None or self._moved:
            return False
        now = self.mark()
        self._moved = now is None or now != dict(mark)
        return not self._moved


class CatchUpMethod(StrEnum):
    OFFSETS = "offsets"  # the group's committed offsets reached the targets
    SETTLE_WINDOW = "settle_window"  # Kafka was unreachable: waited a fixed window instead


@dataclass(frozen=True)
class CatchUp:
    """Whether verification may proceed, how that was decided, and what is still behind.

    Truthy when ``caught_up``. With :attr:`CatchUpMethod.SETTLE_WINDOW` that is an assumption
    (the window passed), not a measurement; ``detail`` says so.
    """

    caught_up: bool
    method: CatchUpMethod
    waited_s: float
    detail: str
    behind: Mapping[int, tuple[int | None, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.caught_up


def _behind(
    committed: Mapping[int, int | None], targets: Mapping[int, int]
) -> dict[int, tuple[int | None, int]]:
    lagging: dict[int, tuple[int | None, int]] = {}
    for partition, target in targets.items():
        offset = committed.get(partition)
        if target > 0 and (offset is None or offset < target):
            lagging[partition] = (offset, target)
    return lagging


def wait_until_caught_up(
    bootstrap: str,
    group: str,
    topic: str,
    targets: Mapping[int, int],
    timeout_s: float,
    *,
    settle_window_s: float = DEFAULT_SETTLE_WINDOW_S,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> CatchUp:
    """Wait until ``group`` has committed at least ``targets`` (end offsets at scan time) on
    every partition of ``topic``, polling every ``poll_interval_s`` for up to ``timeout_s``.

    When Kafka cannot be reached, waits ``settle_window_s`` instead and returns a result whose
    method is :attr:`CatchUpMethod.SETTLE_WINDOW`. A timeout returns ``caught_up=False`` with
    the partitions still behind (committed, target).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    admin = admin_client(bootstrap, request_timeout_s)
    behind: dict[int, tuple[int | None, int]] = {}
    while True:
        try:
            committed = _committed(admin, bootstrap, group, topic, request_timeout_s)
        except ServiceError as exc:
            sleep(settle_window_s)
            return CatchUp(
                caught_up=True,
                method=CatchUpMethod.SETTLE_WINDOW,
                waited_s=time.monotonic() - started,
                detail=(
                    f"{exc} — offsets unknown, so verification waited the settle window of "
                    f"{settle_window_s:g} s instead; rows in flight longer than that may be "
                    "reported as discrepancies"
                ),
            )
        behind = _behind(committed, targets)
        now = time.monotonic()
        if not behind:
            return CatchUp(
                caught_up=True,
                method=CatchUpMethod.OFFSETS,
                waited_s=now - started,
                detail=f"group {group!r} has committed past the scan's end offsets of {topic!r}",
            )
        if now >= deadline:
            lagging = ", ".join(
                f"{topic}[{p}] at {c if c is not None else 'nothing'} < {t}"
                for p, (c, t) in sorted(behind.items())
            )
            return CatchUp(
                caught_up=False,
                method=CatchUpMethod.OFFSETS,
                waited_s=now - started,
                detail=(
                    f"group {group!r} is still behind after {timeout_s:g} s: {lagging}; check "
                    "the sink connector's state and lag, or raise the timeout"
                ),
                behind=behind,
            )
        sleep(min(poll_interval_s, max(0.0, deadline - now)))
