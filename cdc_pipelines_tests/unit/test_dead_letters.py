"""Dead letters without Kafka: header parsing, attribution, grouping, replay headers, the CLI's
message when Kafka is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdc_pipelines.cli import main
from cdc_pipelines.kafka.dead_letters import (
    REPLAY_HEADER,
    DeadLetter,
    FailureReason,
    belongs_to,
    key_text,
    summarize,
)
from cdc_pipelines.kafka.replay_guard import ORIGIN_HEADER
from cdc_pipelines_tests.declarations import all_types_yaml

TOPIC = "shop.ks.orders"
OWN_DLQ = "cdc-dlq.ks.orders"
SHARED_DLQ = "cdc-dlq"
CONVERTER_ERROR = {
    "__connect.errors.stage": "VALUE_CONVERTER",
    "__connect.errors.class.name": "org.apache.kafka.connect.json.JsonConverter",
    "__connect.errors.exception.class.name": "org.apache.kafka.connect.errors.DataException",
    "__connect.errors.exception.message": "Converting byte[] to Kafka Connect data failed",
}
TRANSFORM_ERROR = {
    "__connect.errors.stage": "TRANSFORMATION",
    "__connect.errors.class.name": "io.cdcpipelines.connect.HashFields",
    "__connect.errors.exception.class.name": "org.apache.kafka.connect.errors.DataException",
    "__connect.errors.exception.message": "HashFields: columns [email] are configured to be "
    "hashed but missing from the record",
}


def letter(
    offset: int,
    error: dict[str, str],
    *,
    key: bytes | None = None,
    dlq: str = OWN_DLQ,
    source_topic: str | None = TOPIC,
    stamp: int | None = 1_700_000_000_000,
    extra: tuple[tuple[str, bytes | None], ...] = (),
) -> DeadLetter:
    headers = [*extra, *((k, v.encode()) for k, v in error.items())]
    if source_topic is not None:
        headers += [
            ("__connect.errors.topic", source_topic.encode()),
            ("__connect.errors.partition", b"1"),
            ("__connect.errors.offset", str(offset * 10).encode()),
        ]
    return DeadLetter(
        dlq,
        0,
        offset,
        None if stamp is None else stamp + offset,
        key if key is not None else json.dumps({"schema": {}, "payload": {"id": offset}}).encode(),
        b"value",
        tuple(headers),
    )


def test_the_failure_reason_is_read_from_connects_headers():
    reason = letter(0, TRANSFORM_ERROR).reason
    assert reason == FailureReason(
        stage="TRANSFORMATION",
        executing_class="io.cdcpipelines.connect.HashFields",
        exception="org.apache.kafka.connect.errors.DataException",
        message=TRANSFORM_ERROR["__connect.errors.exception.message"],
    )
    assert reason.describe().startswith(
        "TRANSFORMATION io.cdcpipelines.connect.HashFields: "
        "org.apache.kafka.connect.errors.DataException: HashFields: columns [email]"
    )
    bare = DeadLetter(OWN_DLQ, 0, 0, None, None, None)
    assert bare.reason.describe() == "unknown stage: no error headers"


def test_a_long_message_is_cut_and_undecodable_bytes_are_replaced():
    long = dict(CONVERTER_ERROR, **{"__connect.errors.exception.message": "x" * 1000})
    assert len(letter(0, long).reason.message or "") == 300
    odd = DeadLetter(OWN_DLQ, 0, 0, None, None, None, (("__connect.errors.stage", b"\xffX"),))
    assert odd.reason.stage == "\ufffdX"


def test_letters_are_attributed_by_source_topic_then_by_their_own_dlq_topic():
    assert belongs_to(letter(0, CONVERTER_ERROR), TOPIC, OWN_DLQ)
    assert belongs_to(letter(0, CONVERTER_ERROR, dlq=SHARED_DLQ), TOPIC, OWN_DLQ)
    other = letter(0, CONVERTER_ERROR, dlq=SHARED_DLQ, source_topic="shop.ks.other")
    assert not belongs_to(other, TOPIC, OWN_DLQ)
    assert belongs_to(letter(0, CONVERTER_ERROR, source_topic=None), TOPIC, OWN_DLQ)
    unattributed = letter(0, CONVERTER_ERROR, dlq=SHARED_DLQ, source_topic=None)
    assert not belongs_to(unattributed, TOPIC, OWN_DLQ)


def test_the_summary_groups_by_reason_with_counts_samples_and_age():
    letters = [
        *(letter(i, TRANSFORM_ERROR) for i in range(7)),
        letter(7, CONVERTER_ERROR, key=b"\xff\xfe"),
        letter(8, CONVERTER_ERROR, dlq=SHARED_DLQ, key=b"plain key"),
        letter(9, TRANSFORM_ERROR, stamp=None, extra=((REPLAY_HEADER, b"x/0/1"),)),
    ]
    summary = summarize(letters, [OWN_DLQ, SHARED_DLQ, "empty-dlq"])
    assert summary.count == 10
    assert summary.by_topic == {OWN_DLQ: 9, SHARED_DLQ: 1, "empty-dlq": 0}
    assert [(r.reason.stage, r.count) for r in summary.reasons] == [
        ("TRANSFORMATION", 8),
        ("VALUE_CONVERTER", 2),
    ]
    assert summary.reasons[0].sample_keys == tuple(f'{{"id":{i}}}' for i in range(5))
    assert summary.reasons[1].sample_keys == ("fffe", "plain key")
    assert len(summary.sample_keys) == 5
    assert summary.oldest_ms == 1_700_000_000_000
    assert summary.newest_ms == 1_700_000_000_008
    assert summary.replayed_before == 1
    document = summary.to_dict()
    assert document["oldest"] == "2023-11-14T22:13:20.000Z"
    assert document["newest"] == "2023-11-14T22:13:20.008Z"
    assert document["reasons"][1] == {
        "stage": "VALUE_CONVERTER",
        "class": "org.apache.kafka.connect.json.JsonConverter",
        "exception": "org.apache.kafka.connect.errors.DataException",
        "message": "Converting byte[] to Kafka Connect data failed",
        "count": 2,
        "sample_keys": ["fffe", "plain key"],
    }
    assert json.loads(json.dumps(document)) == document


def test_an_empty_summary():
    summary = summarize([], [OWN_DLQ])
    assert summary.to_dict() == {
        "count": 0,
        "by_topic": {OWN_DLQ: 0},
        "reasons": [],
        "sample_keys": [],
        "oldest": None,
        "newest": None,
        "failed_again_after_replay": 0,
    }


def test_a_replay_keeps_the_original_headers_drops_connects_and_marks_the_record():
    original = letter(
        4,
        TRANSFORM_ERROR,
        extra=(("trace-id", b"abc"), ("empty", None), (REPLAY_HEADER, b"old/0/1")),
    )
    assert original.origin is not None
    assert original.replay_headers() == [
        ("trace-id", b"abc"),
        ("empty", None),
        (REPLAY_HEADER, f"{OWN_DLQ}/0/4".encode()),
        # Where its change sat in the table's topic: Connect's context, kept for the guard.
        (ORIGIN_HEADER, original.origin.encode()),
    ]


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        (None, "(null key)"),
        (
            b'{"schema":{"type":"struct"},"payload":{"id":1,"region":"eu"}}',
            '{"id":1,"region":"eu"}',
        ),
        (b'{"id": 2}', '{"id":2}'),
        (b"not json", "not json"),
        (b"\x00\x81", "0081"),
    ],
)
def test_keys_are_shown_readably(key, shown):
    assert key_text(key) == shown


def test_kafka_down_exits_3_naming_the_servers_and_the_fix(tmp_path: Path, monkeypatch, capsys):
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(all_types_yaml("dlqdown"))
    monkeypatch.setenv("CDC_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    for command in ("inspect", "replay"):
        code = main(
            ["dlq", command, "dlqdown.all_types", "--config", str(declaration), "--timeout", "1"]
        )
        message = capsys.readouterr().err
        assert code == 3
        assert "127.0.0.1:1" in message
        assert "CDC_KAFKA_BOOTSTRAP_SERVERS" in message
        assert "stack status" in message


def test_an_undeclared_table_is_a_usage_error(tmp_path: Path, capsys):
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(all_types_yaml("dlqusage"))
    assert main(["dlq", "inspect", "nope.x", "--config", str(declaration)]) == 2
    assert "dlqusage.all_types" in capsys.readouterr().err
    assert main(["dlq", "replay", "dlqusage.all_types", "--timeout", "0"]) == 2
