"""Each devstack service is real: it stores, streams, applies and serves data."""

from __future__ import annotations

import itertools
import json
import time
import uuid

import psycopg
import requests
from psycopg import sql

from cdc_pipelines.config import DEFAULT_VAULT_SECRET_PATH
from cdc_pipelines.observability.metrics import Gauge, push

RING_MIN = -(2**63)
RING_MAX = 2**63 - 1


def test_cassandra_rows_read_back_through_token_ranges(cql_session, keyspace):
    cql_session.execute(f"CREATE TABLE {keyspace}.items (id int PRIMARY KEY, name text)")
    insert = cql_session.prepare(f"INSERT INTO {keyspace}.items (id, name) VALUES (?, ?)")
    expected = {i: f"item-{i}" for i in range(200)}
    for key, name in expected.items():
        cql_session.execute(insert, (key, name))

    bounds = [RING_MIN + i * (2**64 // 4) for i in range(4)] + [RING_MAX]
    select = cql_session.prepare(
        f"SELECT id, name, token(id) AS t FROM {keyspace}.items "
        "WHERE token(id) > ? AND token(id) <= ?"
    )
    seen: dict[int, str] = {}
    for start, end in itertools.pairwise(bounds):
        for row in cql_session.execute(select, (start, end)):
            assert start < row.t <= end
            assert row.id not in seen, "token ranges overlap"
            seen[row.id] = row.name
    assert seen == expected


def test_kafka_produce_then_consume(kafka_bootstrap, unique_name):
    from confluent_kafka import Consumer, Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    payloads = [f"message-{i}".encode() for i in range(10)]
    for payload in payloads:
        producer.produce(unique_name, value=payload)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": unique_name,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([unique_name])
    received: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(received) < len(payloads) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and message.error() is None:
            received.append(message.value())
    consumer.close()
    assert received == payloads


def _json_record(schema_fields, payload):
    return json.dumps(
        {
            "schema": {"type": "struct", "optional": False, "fields": schema_fields},
            "payload": payload,
        }
    ).encode()


def test_connect_jdbc_sink_writes_a_topic_record_into_postgres(
    connect_url, kafka_bootstrap, postgres_dsn, pg_schema, unique_name, settings
):
    from confluent_kafka import Producer

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.{} (id integer PRIMARY KEY, label text)").format(
                sql.Identifier(pg_schema), sql.Identifier("smoke")
            )
        )
    topic = f"smoke.{unique_name}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        topic,
        key=_json_record([{"field": "id", "type": "int32", "optional": False}], {"id": 7}),
        value=_json_record(
            [
                {"field": "id", "type": "int32", "optional": False},
                {"field": "label", "type": "string", "optional": True},
            ],
            {"id": 7, "label": "through connect"},
        ),
    )
    assert producer.flush(30) == 0

    secrets = DEFAULT_VAULT_SECRET_PATH
    name = f"smoke-{unique_name}"
    config = {
        "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
        "tasks.max": "1",
        "topics": topic,
        "connection.url": "jdbc:postgresql://127.0.0.1:5432/cdc",
        "connection.username": f"${{vault:{secrets}:postgres.user}}",
        "connection.password": f"${{vault:{secrets}:postgres.password}}",
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "schema.evolution": "none",
        "collection.name.format": f"{pg_schema}.smoke",
        "consumer.override.auto.offset.reset": "earliest",
    }
    response = requests.put(f"{connect_url}/connectors/{name}/config", json=config, timeout=30)
    assert response.status_code in (200, 201), response.text
    try:
        row = None
        deadline = time.monotonic() + 90
        while row is None and time.monotonic() < deadline:
            with psycopg.connect(postgres_dsn) as conn:
                row = conn.execute(
                    sql.SQL("SELECT id, label FROM {}.{}").format(
                        sql.Identifier(pg_schema), sql.Identifier("smoke")
                    )
                ).fetchone()
            if row is None:
                time.sleep(1)
        status = requests.get(f"{connect_url}/connectors/{name}/status", timeout=10).json()
        assert row == (7, "through connect"), f"sink did not apply the record; status: {status}"
    finally:
        requests.delete(f"{connect_url}/connectors/{name}", timeout=30)


def test_pushgateway_serves_a_pushed_metric(pushgateway_url, unique_name):
    marker = float(uuid.uuid4().int % 10_000)
    push(
        pushgateway_url,
        job=unique_name,
        gauges=[Gauge("cdc_smoke_value", marker, "smoke test value", {"table": 'shop."orders"'})],
    )
    metrics = requests.get(f"{pushgateway_url}/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines() if line.startswith("cdc_smoke_value{")]
    ours = [line for line in lines if f'job="{unique_name}"' in line]
    assert len(ours) == 1, lines
    assert 'table="shop.\\"orders\\""' in ours[0]
    assert float(ours[0].rsplit(" ", 1)[1]) == marker
    requests.delete(f"{pushgateway_url}/metrics/job/{unique_name}", timeout=10)


def test_dagster_asset_runs_on_a_postgres_backed_instance(instance, dagster_storage):
    import dagster as dg

    from cdc_pipelines_tests.conftest import libpq_url

    @dg.asset
    def smoke_value() -> int:
        return 41 + 1

    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    result = dg.materialize([smoke_value], instance=instance)
    assert result.success
    assert result.output_for_node("smoke_value") == 42
    stored = instance.get_run_by_id(result.run_id)
    assert stored is not None and stored.status == dg.DagsterRunStatus.SUCCESS
    # Stored in the tests' own database, never in the instance the README opens.
    with psycopg.connect(libpq_url(dagster_storage.url)) as conn:
        found = conn.execute(
            "SELECT status FROM runs WHERE run_id = %s", (result.run_id,)
        ).fetchone()
    assert found == ("SUCCESS",)
