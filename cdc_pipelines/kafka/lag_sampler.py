"""Sample consumer lag from Kafka: end offsets, log starts, newest-message timestamps, commits.

One admin client per :meth:`LagSampler.sample` call; every request is issued at once
and awaited against one deadline, so sampling 100 groups costs a few round trips.
A group or partition that does not answer in time is reported, not waited for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.lag import PartitionSample, Tick

DEFAULT_TIMEOUT_S = 10.0
# librdkafka reports "no committed offset" as OFFSET_INVALID.
OFFSET_INVALID = -1001
NO_TIMESTAMP = -1


@dataclass(frozen=True)
class ConsumerTarget:
    """A consumer group reading one topic (a sink connector's group and its table's topic)."""

    group: str
    topic: str


@dataclass(frozen=True)
class TargetSample:
    """One target's tick, or why it could not be sampled."""

    target: ConsumerTarget
    tick: Tick
    topic_exists: bool = True
    problems: tuple[str, ...] = field(default_factory=tuple)


LIBRDKAFKA_LOG = logging.getLogger("cdc_pipelines.kafka.librdkafka")
LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
LIBRDKAFKA_LOG.propagate = False


def admin_client(bootstrap_servers: str, timeout_s: float) -> AdminClient:
    """An admin client whose socket and metadata calls give up after ``timeout_s``.

    librdkafka's own log lines (hundreds while a broker is down) go to the
    ``cdc_pipelines.kafka.librdkafka`` logger, silent unless a handler is attached; a
    failure reaches the caller once, as a :class:`ServiceError`.
    """
    timeout_ms = str(max(1, int(timeout_s * 1000)))
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "socket.timeout.ms": timeout_ms,
        "socket.connection.setup.timeout.ms": timeout_ms,
        "logger": LIBRDKAFKA_LOG,
    }
    return AdminClient(config)


class LagSampler:
    """Reads what lag evaluation needs for many (group, topic) pairs in one pass."""

    def __init__(self, bootstrap_servers: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s

    def sample(
        self, targets: Sequence[ConsumerTarget], now_ms: int | None = None
    ) -> list[TargetSample]:
        """A tick per target; raises :class:`ServiceError` only when Kafka cannot be reached at all."""
        deadline = time.monotonic() + self.timeout_s
        at_ms = int(time.time() * 1000) if now_ms is None else now_ms
        admin = admin_client(self.bootstrap_servers, self.timeout_s)
        try:
            metadata = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise ServiceError(
                f"Kafka at {self.bootstrap_servers} did not answer a metadata request within "
                f"{self.timeout_s:.0f}s ({exc}); check CDC_KAFKA_BOOTSTRAP_SERVERS"
            ) from None
        partitions = {
            t.topic: sorted(metadata.topics[t.topic].partitions)
            for t in targets
            if t.topic in metadata.topics
        }
        all_tps = [TopicPartition(topic, p) for topic, ps in partitions.items() for p in ps]
        request_timeout = self.timeout_s
        ends = _list_offsets(admin, all_tps, OffsetSpec.latest(), request_timeout)
        starts = _list_offsets(admin, all_tps, OffsetSpec.earliest(), request_timeout)
        newest = _list_offsets(admin, all_tps, OffsetSpec.max_timestamp(), request_timeout)
        groups = sorted({t.group for t in targets})
        descriptions = (
            admin.describe_consumer_groups(groups, request_timeout=request_timeout)
            if groups
            else {}
        )
        commits = {
            t: admin.list_consumer_group_offsets(
                [
                    ConsumerGroupTopicPartitions(
                        t.group, [TopicPartition(t.topic, p) for p in partitions[t.topic]]
                    )
                ],
                request_timeout=request_timeout,
            )[t.group]
            for t in targets
            if partitions.get(t.topic)
        }
        samples = []
        for target in targets:
            problems: list[str] = []
            members = _members(descriptions.get(target.group), deadline, problems)
            if target.topic not in partitions:
                samples.append(
                    TargetSample(
                        target,
                        Tick(at_ms, members, {}),
                        topic_exists=False,
                        problems=(f"topic {target.topic!r} does not exist",),
                    )
                )
                continue
            committed = _committed(commits.get(target), deadline, problems)
            tick_partitions: dict[int, PartitionSample] = {}
            for p in partitions[target.topic]:
                key = (target.topic, p)
                end = _offset(
                    ends.get(key), deadline, problems, f"end offset of {target.topic}[{p}]"
                )
                start = _offset(
                    starts.get(key), deadline, problems, f"log start of {target.topic}[{p}]"
                )
                if end is None or start is None:
                    continue
                stamp = _timestamp(newest.get(key), deadline)
                tick_partitions[p] = PartitionSample(
                    log_start=start,
                    log_end=end,
                    committed=committed.get(p),
                    end_timestamp_ms=stamp,
                )
            samples.append(
                TargetSample(target, Tick(at_ms, members, tick_partitions), True, tuple(problems))
            )
        return samples


def _remaining(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _list_offsets(
    admin: AdminClient, tps: Sequence[TopicPartition], spec: OffsetSpec, timeout_s: float
) -> dict[tuple[str, int], Future[Any]]:
    if not tps:
        return {}
    futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): future for tp, future in futures.items()}


def _offset(
    future: Future[Any] | None, deadline: float, problems: list[str], what: str
) -> int | None:
    if future is None:
        problems.append(f"{what}: not requested")
        return None
    try:
        return int(future.result(timeout=_remaining(deadline)).offset)
    except Exception as exc:  # KafkaException, TimeoutError: reported, never raised
        problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return None


def _timestamp(future: Future[Any] | None, deadline: float) -> int | None:
    if future is None:
        return None
    try:
        stamp = int(future.result(timeout=_remaining(deadline)).timestamp)
    except Exception:  # an unknown timestamp only makes the time lag unknown
        return None
    return None if stamp == NO_TIMESTAMP else stamp


def _members(future: Future[Any] | None, deadline: float, problems: list[str]) -> int | None:
    if future is None:
        return None
    try:
        return len(future.result(timeout=_remaining(deadline)).members)
    except Exception as exc:  # a group that cannot be described has unknown liveness
        problems.append(f"group description: {type(exc).__name__}: {exc}")
        return None


def _committed(
    future: Future[Any] | None, deadline: float, problems: list[str]
) -> Mapping[int, int]:
    if future is None:
        return {}
    try:
        result = future.result(timeout=_remaining(deadline))
    except Exception as exc:  # no commits known: lag is measured from the log start
        problems.append(f"committed offsets: {type(exc).__name__}: {exc}")
        return {}
    return {
        tp.partition: int(tp.offset)
        for tp in result.topic_partitions
        if tp.error is None and tp.offset != OFFSET_INVALID and tp.offset >= 0
    }
