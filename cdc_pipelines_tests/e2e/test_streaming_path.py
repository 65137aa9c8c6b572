"""The streaming path end to end: CDC envelopes → Kafka → Connect's JDBC sink → PostgreSQL.

The devstack has no Scylla CDC log, so the source connector is emulated: rows are
written to Cassandra and the connector's exact envelope is produced to the topic.
Everything after that is real: Kafka, the Connect worker, the Debezium JDBC sink
with the generated config and the project's transforms, PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import time
import uuid
from decimal import Decimal

import psycopg
import pytest
from cassandra.util import Duration
from confluent_kafka import Consumer
from psycopg import sql

from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_config
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines_tests.declarations import all_types_declaration
from cdc_pipelines_tests.e2e.tables import both_sides

APPLY_TIMEOUT_S = 120


def row(i: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": i,
        "region": "eu-west",
        "order": i * 10,
        "Mixed Case": f"Ünïcode «{i}» \"quoted\" 'single'",
        "c_bigint": 2**62 + i,
        "c_smallint": -(2**15),
        "c_tinyint": 127,
        "c_varint": 10**30 + i,
        "c_decimal": Decimal("12345678901234567890.000123"),
        "c_float": 1.5,
        "c_double": -2.25e-300,
        "c_boolean": i % 2 == 0,
        "c_text": "",
        "c_ascii": "plain ascii",
        "c_blob": b"\x00\xff\x10" * 3,
        "c_uuid": uuid.UUID(int=i + 1),
        "c_timeuuid": uuid.UUID("5a3f1c30-8b2e-11ee-b9d1-0242ac120002"),
        "c_timestamp": dt.datetime(2024, 2, 29, 23, 59, 59, 123000, tzinfo=dt.UTC),
        "c_date": dt.date(1969, 12, 31),
        "c_time": 3723_000_000_123,
        "c_duration": Duration(1, 2, 3),
        "c_inet": ipaddress.ip_address("2001:db8::1"),
        "c_list": [3, 1, 2],
        "c_set": {"b", "a"},
        "c_list_uuid": [uuid.UUID(int=7)],
        "c_frozen_list": [2**40, -1],
        "c_map": {"k": 1, "z": 26},
        "c_tuple": (1, "two", 3.0),
        "c_udt": {"street": "Main St", "zip": 12345},
    }
    base.update(changes)
    return base


def expected_pg(r: dict[str, object], version: int) -> dict[str, object]:
    """What PostgreSQL must hold for a row, per the documented type mapping."""
    return {
        **{k: r[k] for k in ("id", "region", "order", "Mixed Case", "c_bigint", "c_smallint")},
        "c_tinyint": r["c_tinyint"],
        "c_varint": Decimal(r["c_varint"]),  # type: ignore[arg-type]
        "c_decimal": r["c_decimal"],
        "c_float": r["c_float"],
        "c_double": r["c_double"],
        "c_boolean": r["c_boolean"],
        "c_text": r["c_text"],
        "c_ascii": r["c_ascii"],
        "c_blob": r["c_blob"],
        "c_uuid": r["c_uuid"],
        "c_timeuuid": r["c_timeuuid"],
        "c_timestamp": r["c_timestamp"],
        "c_date": r["c_date"],
        "c_time": r["c_time"],
        "c_duration": "1mo2d3ns",
        "c_inet": r["c_inet"],
        "c_list": r["c_list"],
        "c_set": sorted(r["c_set"]),  # type: ignore[call-overload]
        "c_list_uuid": [str(u) for u in r["c_list_uuid"]],  # type: ignore[attr-defined]
        "c_frozen_list": r["c_frozen_list"],
        "c_map": [{"key": k, "value": v} for k, v in r["c_map"].items()],  # type: ignore[attr-defined]
        "c_tuple": {
            f"tuple_member_{i}": v
            for i, v in enumerate(r["c_tuple"])  # type: ignore[call-overload]
        },
        "c_udt": r["c_udt"],
        "_cdc_version_us": version,
    }


@pytest.fixture
def pipeline(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name):
    config = all_types_declaration(unique_name)
    table = config.tables[0]
    client = ConnectClient(connect_url)
    sink = sink_connector_config(config, table)
    with both_sides(cql_session, postgres_dsn, config, table):
        source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
        try:
            yield config, table, client, sink, source
        finally:
            client.delete(sink.name)


def pg_rows(dsn: str, schema: str) -> dict[int, dict[str, object]]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(sql.SQL("SELECT * FROM {}.all_types").format(sql.Identifier(schema)))
        return {r["id"]: r for r in cur.fetchall()}


def wait_for(dsn: str, schema: str, predicate, client: ConnectClient, sink_name: str):
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    rows = pg_rows(dsn, schema)
    while not predicate(rows) and time.monotonic() < deadline:
        time.sleep(1)
        rows = pg_rows(dsn, schema)
    if not predicate(rows):
        status = client.status(sink_name)
        pytest.fail(f"the sink did not apply the events in time; rows={rows}; status={status}")
    return rows


def test_inserts_updates_and_deletes_of_every_type_land_exactly(
    pipeline, postgres_dsn, unique_name
):
    _config, _table, client, sink, source = pipeline
    changes = client.apply([sink])
    assert [c.kind for c in changes] == ["create"]
    assert client.apply([sink])[0].kind == "unchanged"

    t0 = now_us()
    rows = {i: row(i) for i in range(1, 6)}
    source.upsert(list(rows.values()), t0)
    # An update carries the full post-image: untouched columns keep their values.
    rows[2] = row(2, c_text="updated", c_list=[9], c_map={"new": 1}, c_udt=None)
    source.upsert([rows[2]], t0 + 100, op="u")
    source.delete([{"id": 3, "region": "eu-west", "order": 30}], t0 + 200)
    del rows[3]
    source.flush()

    versions = {1: t0, 2: t0 + 100, 4: t0 + 3, 5: t0 + 4}
    landed = wait_for(
        postgres_dsn,
        unique_name,
        lambda got: set(got) == set(rows) and got.get(2, {}).get("c_text") == "updated",
        client,
        sink.name,
    )
    for key, expected_row in rows.items():
        expected = expected_pg(expected_row, versions[key])
        if expected_row["c_udt"] is None:
            expected["c_udt"] = None
        assert landed[key] == expected, f"row {key} differs"


def test_a_poison_message_goes_to_the_dlq_and_later_events_still_apply(
    pipeline, postgres_dsn, unique_name, kafka_bootstrap
):
    config, table, client, sink, source = pipeline
    client.apply([sink])
    source.upsert([row(1)], now_us())
    source.publish_raw(b'{"not": "a connect envelope"', b"\xff\xfe not json")
    source.upsert([row(2)], now_us())
    source.flush()
    wait_for(postgres_dsn, unique_name, lambda got: set(got) == {1, 2}, client, sink.name)
    assert client.status(sink.name).healthy

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"{unique_name}-dlq-reader",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([config.dlq_topic_for(table)])
    message = None
    deadline = time.monotonic() + 60
    while message is None and time.monotonic() < deadline:
        polled = consumer.poll(1.0)
        if polled is not None and polled.error() is None:
            message = polled
    consumer.close()
    assert message is not None, "nothing reached the dead-letter topic"
    assert message.value() == b"\xff\xfe not json"
    headers = {k: (v or b"").decode(errors="replace") for k, v in message.headers() or []}
    assert headers["__connect.errors.topic"] == config.topic_for(table)
    assert (
        "JsonConverter" in headers["__connect.errors.class.name"]
        or headers["__connect.errors.exception.class.name"]
    )
    assert json.loads(json.dumps(headers))  # headers are plain text a human can read
