"""One table's dead letters: read them whole, summarise why they failed, replay them.

A table's dead letters are the records of its own DLQ topic and those of the shared DLQ
topic (written by earlier versions) whose ``__connect.errors.topic`` header names the
table's topic. :func:`summarize` groups them by the failure Connect recorded in the
headers (stage, the class that ran, exception class and message).

A replay re-publishes them to the table's topic with their key, value and headers (the
``__connect.errors.*`` ones dropped, a :data:`REPLAY_HEADER` marker and the change's
position in the topic added), skipping a letter whose key the topic holds a newer change of
(``kafka.replay_guard``: the sink would let the older change overwrite it), in DLQ offset
order through an idempotent producer that places keys like Kafka's Java producer (murmur2),
so every change of a key lands in one partition in its original order. How far a table
was replayed is the committed offset of its own consumer group on the DLQ topics
(:func:`replay_group`), committed only after Kafka acknowledged every record produced
before it: a rerun replays nothing twice, and a crash re-sends at most one chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.dlq import (
    CONSUME_BATCH,
    ERROR_TEXT_LIMIT,
    HEADER_EXCEPTION,
    HEADER_MESSAGE,
    HEADER_STAGE,
    HEADER_TOPIC,
    DlqReader,
    DlqSnapshot,
    PartitionKey,
    PartitionRange,
)
from cdc_pipelines.kafka.lag_sampler import LIBRDKAFKA_LOG
from cdc_pipelines.kafka.replay_guard import ORIGIN_HEADER, Position, newest_changes, origin_of

DEFAULT_TIMEOUT_S = 10.0
ERROR_HEADER_PREFIX = "__connect.errors."
HEADER_EXECUTING_CLASS = "__connect.errors.class.name"
"""The converter or transform Connect was running when the record failed."""
REPLAY_HEADER = "cdc-pipelines.replayed-from"
"""Added to every replayed record: ``<dlq topic>/<partition>/<offset>`` it was replayed from."""
REPLAY_GROUP_PREFIX = "cdc-pipelines-dlq-replay"
REPLAY_CHUNK = 500
"""Records produced between two offset commits: what a crash may re-send at most."""
SAMPLE_KEYS = 5
KEY_TEXT_LIMIT = 200

Header = tuple[str, bytes | None]


def replay_group(source: str) -> str:
    """The consumer group whose committed DLQ offsets say how far ``source`` was replayed."""
    return f"{REPLAY_GROUP_PREFIX}.{source}"


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic, whole: what a replay re-publishes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    def header(self, name: str, limit: int | None = None) -> str | None:
        """The last value of header ``name`` as text (Connect writes each once)."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = None if value is None else value.decode("utf-8", "replace")
        return found if found is None or limit is None else found[:limit]

    @property
    def source_topic(self) -> str | None:
        return self.header(HEADER_TOPIC)

    @property
    def reason(self) -> FailureReason:
        return FailureReason(
            stage=self.header(HEADER_STAGE),
            executing_class=self.header(HEADER_EXECUTING_CLASS),
            exception=self.header(HEADER_EXCEPTION),
            message=self.header(HEADER_MESSAGE, ERROR_TEXT_LIMIT),
        )

    @property
    def replayed_before(self) -> bool:
        """It carries a replay marker: it failed again after an earlier replay."""
        return any(key == REPLAY_HEADER for key, _ in self.headers)

    @property
    def origin(self) -> Position | None:
        """Where its change sat in the table's topic (None: Connect recorded no context)."""
        return origin_of(self.headers)

    def replay_headers(self) -> list[tuple[str, str | bytes | None]]:
        """The original headers without Connect's error context and earlier replay markers,
        plus a marker naming where this record was replayed from and its change's origin."""
        kept: list[tuple[str, str | bytes | None]] = [
            (key, value)
            for key, value in self.headers
            if not key.startswith(ERROR_HEADER_PREFIX) and key not in (REPLAY_HEADER, ORIGIN_HEADER)
        ]
        marker = f"{self.topic}/{self.partition}/{self.offset}".encode()
        origin = self.origin
        return [
            *kept,
            (REPLAY_HEADER, marker),
            *([(ORIGIN_HEADER, origin.encode())] if origin is not None else []),
        ]

    def key_text(self) -> str:
        return key_text(self.key)


@dataclass(frozen=True, order=True)
class FailureReason:
    """Why Connect dead-lettered a record, from its ``__connect.errors.*`` headers."""

    stage: str | None
    executing_class: str | None
    exception: str | None
    message: str | None

    def describe(self) -> str:
        where = " ".join(x for x in (self.stage, self.executing_class) if x) or "unknown stage"
        what = ": ".join(x for x in (self.exception, self.message) if x) or "no error headers"
        return f"{where}: {what}"


def key_text(key: bytes | None) -> str:
    """A record key for people: a Connect JSON key's payload, else its text, else hex."""
    if key is None:
        return "(null key)"
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()[:KEY_TEXT_LIMIT]
    try:
        document = json.loads(text)
    except ValueError:
        return text[:KEY_TEXT_LIMIT]
    if isinstance(document, dict) and set(document) == {"schema", "payload"}:
        document = document["payload"]
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, default=str)[
        :KEY_TEXT_LIMIT
    ]


def belongs_to(letter: DeadLetter, topic: str, dlq_topic: str) -> bool:
    """Whether ``letter`` is a dead letter of the table whose topic is ``topic``.

    The source-topic header decides; a letter without it belongs to the table whose own DLQ
    topic holds it (a letter of the shared topic without it cannot be attributed).
    """
    source = letter.source_topic
    if source is not None:
        return source == topic
    return letter.topic == dlq_topic


@dataclass(frozen=True)
class ReasonCount:
    reason: FailureReason
    count: int
    sample_keys: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.reason.stage,
            "class": self.reason.executing_class,
            "exception": self.reason.exception,
            "message": self.reason.message,
            "count": self.count,
            "sample_keys": list(self.sample_keys),
        }


@dataclass(frozen=True)
class DeadLetterSummary:
    """Dead letters counted by DLQ topic and failure reason, with sample keys and age."""

    count: int
    by_topic: Mapping[str, int]
    reasons: tuple[ReasonCount, ...]
    sample_keys: tuple[str, ...]
    oldest_ms: int | None
    newest_ms: int | None
    replayed_before: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "by_topic": dict(self.by_topic),
            "reasons": [r.to_dict() for r in self.reasons],
            "sample_keys": list(self.sample_keys),
            "oldest": _iso(self.oldest_ms),
            "newest": _iso(self.newest_ms),
            "failed_again_after_replay": self.replayed_before,
        }


@dataclass
class SummaryBuilder:
    """Adds letters one at a time, so a long DLQ is summarised without holding it."""

    sample_size: int = SAMPLE_KEYS
    count: int = 0
    by_topic: Counter[str] = field(default_factory=Counter)
    reasons: Counter[FailureReason] = field(default_factory=Counter)
    reason_keys: dict[FailureReason, list[str]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    oldest_ms: int | None = None
    newest_ms: int | None = None
    replayed_before: int = 0

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        self.by_topic[letter.topic] += 1
        reason = letter.reason
        self.reasons[reason] += 1
        text = letter.key_text()
        samples = self.reason_keys.setdefault(reason, [])
        if len(samples) < self.sample_size and text not in samples:
            samples.append(text)
        if len(self.keys) < self.sample_size and text not in self.keys:
            self.keys.append(text)
        stamp = letter.timestamp_ms
        if stamp is not None:
            self.oldest_ms = stamp if self.oldest_ms is None else min(self.oldest_ms, stamp)
            self.newest_ms = stamp if self.newest_ms is None else max(self.newest_ms, stamp)
        self.replayed_before += letter.replayed_before

    def build(self, topics: Sequence[str] = ()) -> DeadLetterSummary:
        counts = {topic: 0 for topic in topics} | dict(self.by_topic)
        return DeadLetterSummary(
            count=self.count,
            by_topic=counts,
            reasons=tuple(
                ReasonCount(reason, count, tuple(self.reason_keys[reason]))
                for reason, count in sorted(self.reasons.items(), key=lambda rc: (-rc[1], rc[0]))
            ),
            sample_keys=tuple(self.keys),
            oldest_ms=self.oldest_ms,
            newest_ms=self.newest_ms,
            replayed_before=self.replayed_before,
        )


def summarize(letters: Sequence[DeadLetter], topics: Sequence[str] = ()) -> DeadLetterSummary:
    builder = SummaryBuilder()
    for letter in letters:
        builder.add(letter)
    return builder.build(topics)


def _iso(stamp_ms: int | None) -> str | None:
    if stamp_ms is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp_ms / 1000)) + (
        f".{stamp_ms % 1000:03d}Z"
    )


@dataclass(frozen=True)
class Inspection:
    """All retained dead letters of a table, and how many a replay has not passed yet."""

    summary: DeadLetterSummary
    not_replayed: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary.to_dict(), "not_replayed": self.not_replayed}


@dataclass(frozen=True)
class ReplayResult:
    """What a replay published (or, dry, would publish) and where it committed."""

    summary: DeadLetterSummary
    applied: bool
    replayed: int
    committed: Mapping[PartitionKey, int]
    superseded: int = 0  # skipped: the topic holds a newer change of the key
    unguarded: int = 0  # without the position of their change: replayed unchecked

    @property
    def to_replay(self) -> int:
        """The letters a replay publishes (a dry run's count of what it would)."""
        return self.summary.count - self.superseded

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary.to_dict(),
            "applied": self.applied,
            "replayed": self.replayed,
            "superseded": self.superseded,
            "unguarded": self.unguarded,
            "committed": {f"{t}[{p}]": o for (t, p), o in sorted(self.committed.items())},
        }


Progress = Callable[[int, int], None]
"""Called with (letters read, letters to read) while a replay runs."""


class TableDeadLetters:
    """The dead letters of one table on one Kafka cluster; every wait bounded by ``timeout_s``."""

    def __init__(
        self,
        bootstrap_servers: str,
        source: str,
        topic: str,
        dlq_topic: str,
        shared_dlq_topic: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.source = source
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.shared_dlq_topic = shared_dlq_topic if shared_dlq_topic != dlq_topic else None
        self.timeout_s = timeout_s
        self.group = replay_group(source)
        self._failures: list[str] = []

    @property
    def dlq_topics(self) -> tuple[str, ...]:
        return (self.dlq_topic, *([self.shared_dlq_topic] if self.shared_dlq_topic else []))

    def snapshot(self) -> DlqSnapshot:
        """Retained offsets of the table's DLQ topics; a :class:`ServiceError` when none exists."""
        try:
            snapshot = DlqReader(self.bootstrap_servers, self.timeout_s).snapshot(self.dlq_topics)
        except ServiceError as exc:
            raise ServiceError(
                f"{exc}; is Kafka running there? (locally: cdc-pipelines stack status)"
            ) from None
        if not snapshot.partitions:
            raise ServiceError(
                f"{self.source}: no dead-letter topic {' or '.join(self.dlq_topics)} on Kafka at "
                f"{self.bootstrap_servers}. Connect creates it when the table's sink starts: "
                "deploy the sink (cdc-pipelines connectors apply), or point "
                "CDC_KAFKA_BOOTSTRAP_SERVERS at the cluster Connect writes to"
            )
        return snapshot

    def inspect(self) -> Inspection:
        """Every retained dead letter of the table, summarised."""
        snapshot = self.snapshot()
        builder = SummaryBuilder()
        not_replayed = 0
        consumer = self._consumer()
        try:
            committed = self._committed(consumer, snapshot)
            for letter in self._letters(consumer, snapshot.partitions):
                if belongs_to(letter, self.topic, self.dlq_topic):
                    builder.add(letter)
                    not_replayed += letter.offset >= committed.get(
                        (letter.topic, letter.partition), -1
                    )
        finally:
            consumer.close()
        return Inspection(builder.build(sorted(snapshot.topics())), not_replayed)

    def replay(self, apply: bool = False, progress: Progress | None = None) -> ReplayResult:
        """The dead letters past the table's replay offsets: summarised, and with ``apply``
        re-published to the table's topic, committing the offsets chunk by chunk. A letter
        whose key has a newer change in the topic is skipped (superseded), dry run or not."""
        snapshot = self.snapshot()
        self._failures = []
        consumer = self._consumer()
        producer = self._producer() if apply else None
        builder = SummaryBuilder()
        committed_now: dict[PartitionKey, int] = {}
        superseded = unguarded = replayed = 0
        try:
            if producer is not None:
                self._check_topic(consumer)
            committed = self._committed(consumer, snapshot)
            ranges = {
                key: PartitionRange(max(committed.get(key, r.start), r.start), r.end)
                for key, r in snapshot.partitions.items()
            }
            newest = self._newest_changes(consumer, ranges)
            total = sum(r.depth for r in ranges.values())
            unsent: dict[PartitionKey, int] = {}
            chunk = 0
            for read, letter in enumerate(self._in_topic_order(consumer, ranges), start=1):
                if belongs_to(letter, self.topic, self.dlq_topic):
                    builder.add(letter)
                    # A keyless letter has no key to compare: replayed unchecked.
                    origin = letter.origin if letter.key is not None else None
                    unguarded += origin is None
                    if origin is not None and (
                        newest.get((origin.partition, letter.key), -1) > origin.offset
                    ):
                        superseded += 1
                    elif producer is not None:
                        self._produce(producer, letter)
                        replayed += 1
                        chunk += 1
                unsent[(letter.topic, letter.partition)] = letter.offset + 1
                if producer is not None and chunk >= REPLAY_CHUNK:
                    self._acknowledge_and_commit(producer, consumer, unsent, committed_now)
                    chunk = 0
                if progress is not None:
                    progress(read, total)
            if producer is not None:
                self._acknowledge_and_commit(producer, consumer, unsent, committed_now)
        finally:
            consumer.close()
        summary = builder.build(sorted(snapshot.topics()))
        return ReplayResult(summary, apply, replayed, committed_now, superseded, unguarded)

    def _newest_changes(
        self, consumer: Consumer, ranges: Mapping[PartitionKey, PartitionRange]
    ) -> dict[tuple[int, bytes | None], int]:
        """The latest position in the table's topic of every key the letters in ``ranges``
        change, looked for from the oldest letter's change of each partition on."""
        wanted: dict[int, dict[bytes | None, int]] = {}
        for letter in self._in_topic_order(consumer, ranges):
            origin = letter.origin
            if (
                origin is not None
                and letter.key is not None
                and belongs_to(letter, self.topic, self.dlq_topic)
            ):
                keys = wanted.setdefault(origin.partition, {})
                keys[letter.key] = min(keys.get(letter.key, origin.offset), origin.offset)
        return newest_changes(self.bootstrap_servers, self.topic, wanted, self.timeout_s)

    # -- Kafka clients -------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                # Assigned, never subscribed: the group only holds the replay's offsets.
                "group.id": self.group,
                "client.id": f"{self.group}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "socket.timeout.ms": str(int(self.timeout_s * 1000)),
                "logger": LIBRDKAFKA_LOG,
            }
        )

    def _producer(self) -> Producer:
        return Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                # Kafka's Java producer (and so the CDC source) partitions keys by murmur2.
                "partitioner": "murmur2_random",
                "linger.ms": 20,
                "message.timeout.ms": str(int(max(30.0, 3 * self.timeout_s) * 1000)),
                "logger": LIBRDKAFKA_LOG,
            }
        )

    def _check_topic(self, consumer: Consumer) -> None:
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise ServiceError(
                f"Kafka at {self.bootstrap_servers} did not answer within {self.timeout_s:.0f}s "
                f"({exc}); check CDC_KAFKA_BOOTSTRAP_SERVERS"
            ) from None
        found = metadata.topics.get(self.topic)
        if found is None or found.error is not None or not found.partitions:
            raise ServiceError(
                f"{self.source}: the table's topic {self.topic} does not exist on Kafka at "
                f"{self.bootstrap_servers}; nothing was replayed (the source connector creates "
                "it; check the declaration's topic_prefix and CDC_KAFKA_BOOTSTRAP_SERVERS)"
            )

    def _committed(self, consumer: Consumer, snapshot: DlqSnapshot) -> dict[PartitionKey, int]:
        tps = [TopicPartition(t, p) for t, p in sorted(snapshot.partitions)]
        try:
            found = consumer.committed(tps, timeout=self.timeout_s)
        except KafkaException as exc:
            raise ServiceError(
                f"Kafka at {self.bootstrap_servers} did not return the offsets of group "
                f"{self.group} within {self.timeout_s:.0f}s: {exc}"
            ) from None
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def _in_topic_order(
        self, consumer: Consumer, ranges: Mapping[PartitionKey, PartitionRange]
    ) -> Iterator[DeadLetter]:
        """Every letter, one DLQ topic after the other: the shared queue (which earlier
        declarations wrote to) before the table's own, so that a key whose letters sit in
        both is replayed oldest first; within a topic, each partition in offset order."""
        topics = sorted({t for t, _ in ranges}, key=lambda t: (t == self.dlq_topic, t))
        for topic in topics:
            part = {key: r for key, r in ranges.items() if key[0] == topic}
            yield from self._letters(consumer, part)

    def _letters(
        self, consumer: Consumer, ranges: Mapping[PartitionKey, PartitionRange]
    ) -> Iterator[DeadLetter]:
        """The records of ``ranges``, each partition in offset order."""
        pending = {key: r.end for key, r in ranges.items() if r.end > r.start}
        if not pending:
            return
        consumer.assign([TopicPartition(t, p, ranges[(t, p)].start) for t, p in sorted(pending)])
        idle_until = time.monotonic() + self.timeout_s
        while pending:
            if time.monotonic() > idle_until:
                raise ServiceError(
                    f"reading the dead letters of {self.source} from Kafka at "
                    f"{self.bootstrap_servers} stalled for {self.timeout_s:.0f}s with "
                    f"{len(pending)} partition(s) unread"
                )
            for message in consumer.consume(CONSUME_BATCH, timeout=1.0):
                error = message.error()
                key = (message.topic() or "", message.partition() or 0)
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.pop(key, None)
                        continue
                    raise ServiceError(f"reading {key[0]} failed: {error}")
                idle_until = time.monotonic() + self.timeout_s
                offset = message.offset() or 0
                if key not in pending or offset >= pending[key]:
                    continue
                yield letter_of(message)
                if offset + 1 >= pending[key]:
                    del pending[key]

    def _produce(self, producer: Producer, letter: DeadLetter) -> None:
        while True:
            try:
                producer.produce(
                    self.topic,
                    key=letter.key,
                    value=letter.value,
                    headers=letter.replay_headers(),
                    on_delivery=self._delivered,
                )
                break
            except BufferError:
                producer.poll(0.5)
            except KafkaException as exc:
                raise ServiceError(f"cannot produce to {self.topic}: {exc}") from None
        producer.poll(0)

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._failures.append(str(error))

    def _acknowledge_and_commit(
        self,
        producer: Producer,
        consumer: Consumer,
        unsent: dict[PartitionKey, int],
        committed_now: dict[PartitionKey, int],
    ) -> None:
        """Wait for Kafka to acknowledge every produced record, then commit ``unsent``."""
        remaining = producer.flush(max(30.0, 3 * self.timeout_s))
        failures = self._failures
        if remaining or failures:
            raise ServiceError(
                f"{remaining + len(failures)} replayed record(s) of {self.source} were not "
                f"acknowledged by Kafka at {self.bootstrap_servers} "
                f"({'; '.join(failures[:3]) or 'flush timed out'}); the replay offsets stay at "
                f"{_offsets_text(committed_now) or 'where they were'}: rerun the replay"
            )
        if not unsent:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(unsent.items())]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            raise ServiceError(
                f"{self.source}: replayed records were acknowledged but group {self.group} "
                f"could not commit {_offsets_text(unsent)} on Kafka at "
                f"{self.bootstrap_servers}: {exc}; a rerun re-sends them"
            ) from None
        committed_now.update(unsent)
        unsent.clear()


def _offsets_text(offsets: Mapping[PartitionKey, int]) -> str:
    return ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(offsets.items()))


def letter_of(message: Message) -> DeadLetter:
    kind, stamp = message.timestamp()
    return DeadLetter(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        timestamp_ms=stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None,
        key=_bytes(message.key()),
        value=_bytes(message.value()),
        headers=_headers(message),
    )


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def _headers(message: Message) -> tuple[Header, ...]:
    raw: Any = message.headers() or []  # a list of pairs (a dict only when produced as one)
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(name), _bytes(value)) for name, value in pairs)
