"""Where a dead letter's change sat in the table's topic, which decides whether a newer
change of its key replaced it."""

from __future__ import annotations

from cdc_pipelines.kafka.dead_letters import REPLAY_HEADER, DeadLetter
from cdc_pipelines.kafka.dlq import HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from cdc_pipelines.kafka.replay_guard import ORIGIN_HEADER, Position, origin_of


def letter(*headers: tuple[str, bytes | None]) -> DeadLetter:
    return DeadLetter("dlq", 0, 7, None, b"k", b"v", headers)


def test_a_letters_origin_is_connects_error_context() -> None:
    first = letter((HEADER_TOPIC, b"t"), (HEADER_PARTITION, b"2"), (HEADER_OFFSET, b"41"))
    assert first.origin == Position(2, 41)


def test_a_replayed_record_keeps_its_first_origin_when_it_fails_again() -> None:
    first = letter((HEADER_TOPIC, b"t"), (HEADER_PARTITION, b"2"), (HEADER_OFFSET, b"41"))
    replayed = dict(first.replay_headers())
    assert replayed[ORIGIN_HEADER] == b"2/41" and replayed[REPLAY_HEADER] == b"dlq/0/7"
    assert not any(k.startswith("__connect.errors.") for k in replayed)
    # The replayed copy sits at offset 90 of the topic and is dead-lettered again there.
    again = letter(
        *((k, v if isinstance(v, bytes) else None) for k, v in first.replay_headers()),
        (HEADER_TOPIC, b"t"),
        (HEADER_PARTITION, b"2"),
        (HEADER_OFFSET, b"90"),
    )
    assert again.origin == Position(2, 41)
    assert [k for k, _ in again.replay_headers()].count(ORIGIN_HEADER) == 1


def test_without_context_or_with_garbage_there_is_no_origin() -> None:
    assert letter().origin is None
    assert letter((HEADER_PARTITION, b"2")).origin is None
    assert origin_of([(HEADER_PARTITION, b"x"), (HEADER_OFFSET, b"1")]) is None
    assert origin_of([(ORIGIN_HEADER, b"3-4")]) is None
