"""Throughput and apply latency of the streaming path: Kafka → Connect JDBC sink → PostgreSQL.

Run on the devstack: ``python -m cdc_pipelines_tests.benchmarks.bench_sink_throughput``.
Events in the Scylla CDC envelope are produced at a steady rate; the target table
is polled, and because one partition is applied in order, row ``i`` is visible at
the first poll whose count exceeds ``i``: latency = visible time − produce time.
Baseline in the same run: the same upserts issued straight from Python with
psycopg's pipelined ``executemany`` (what a hand-written consumer would do).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import uuid
from decimal import Decimal

import psycopg
from confluent_kafka import Producer
from psycopg import sql

from cdc_pipelines.config import parse_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import ConnectorConfig, sink_connector_config
from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.scylla.cdc_envelope import ScyllaCdcEnvelope

POLL_INTERVAL_S = 0.1


def declaration(name: str, batch_size: int) -> str:
    return f"""
connectors:
  topic_prefix: {name}
  sink_name_prefix: {name}
  dlq_topic: {name}-dlq
  sink_batch_size: {batch_size}
tables:
  - source: {name}.orders
    target: {name}.orders
    partition_key: [id]
    columns: {{id: bigint, region: text, status: text, total: decimal, quantity: int,
               placed_at: timestamp}}
"""


def rows(count: int) -> list[dict[str, object]]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [
        {
            "id": i,
            "region": ("eu-west", "us-east")[i % 2],
            "status": "paid",
            "total": Decimal(i % 100_000) / 100,
            "quantity": i % 17 + 1,
            "placed_at": base + dt.timedelta(seconds=i),
        }
        for i in range(count)
    ]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    events: int, rate: int, batch_size: int, overrides: dict[str, str] | None = None
) -> dict[str, float]:
    layout = StackLayout.from_env()
    for key, value in stack.stack_env(layout).items():
        os.environ.setdefault(key, value)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    config = parse_config(declaration(name, batch_size))
    table = config.tables[0]
    dsn = os.environ["CDC_POSTGRES_DSN"]
    client = ConnectClient(os.environ["CDC_CONNECT_URL"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
    sink = sink_connector_config(config, table)
    if overrides:
        sink = ConnectorConfig(sink.name, {**sink.config, **overrides})
    client.apply([sink])
    client.wait_for_state(sink.name, "RUNNING")
    envelope = ScyllaCdcEnvelope(config, table)
    data = rows(events)
    messages = [envelope.upsert(r, 1_800_000_000_000_000 + i) for i, r in enumerate(data)]
    producer = Producer(
        {"bootstrap.servers": os.environ["CDC_KAFKA_BOOTSTRAP_SERVERS"], "linger.ms": 5}
    )
    target = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(table.target_schema), sql.Identifier(table.target_table)
    )
    produced_at: list[float] = []
    visible_at: list[float] = [0.0] * events
    seen = 0
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as poll:
        next_poll = started
        for i, message in enumerate(messages):
            due = started + i / rate
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    seen = _mark(poll, target, seen, visible_at, now)
                    next_poll = now + POLL_INTERVAL_S
                if now >= due:
                    break
                time.sleep(min(due - now, 0.002))
            producer.produce(envelope.topic, key=message.key, value=message.value)
            producer.poll(0)
            produced_at.append(time.monotonic())
        producer.flush(60)
        deadline = time.monotonic() + 300
        while seen < events and time.monotonic() < deadline:
            seen = _mark(poll, target, seen, visible_at, time.monotonic())
            time.sleep(POLL_INTERVAL_S)
    finished = max(visible_at)
    latencies = [v - p for v, p in zip(visible_at, produced_at, strict=True) if v]
    sustained = events / (finished - produced_at[0])

    baseline = _baseline(dsn, table, config.defaults.version_column, data)
    client.delete(sink.name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    return {
        "events": events,
        "offered_rate": rate,
        "sustained_events_per_s": sustained,
        "p50_latency_s": statistics.median(latencies),
        "p95_latency_s": percentile(latencies, 0.95),
        "baseline_python_upserts_per_s": baseline,
        "ratio_vs_baseline": sustained / baseline,
    }


def _mark(
    conn: psycopg.Connection, query: sql.Composed, seen: int, visible_at: list[float], now: float
) -> int:
    row = conn.execute(query).fetchone()
    count = int(row[0]) if row else 0
    for index in range(seen, min(count, len(visible_at))):
        visible_at[index] = now
    return max(seen, count)


def _baseline(dsn: str, table: object, version: str, data: list[dict[str, object]]) -> float:
    from cdc_pipelines.config import TableSpec

    assert isinstance(table, TableSpec)
    columns = [c.name for c in table.columns]
    statement = sql.SQL(
        "INSERT INTO {t}.{n}_copy ({cols}, {v}) VALUES ({vals}, %s) "
        "ON CONFLICT ({pk}) DO UPDATE SET {sets}"
    ).format(
        t=sql.Identifier(table.target_schema),
        n=sql.SQL(table.target_table),
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        v=sql.Identifier(version),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        pk=sql.Identifier("id"),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in columns[1:]
        ),
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {t}.{n}_copy (LIKE {t}.{n} INCLUDING ALL)").format(
                t=sql.Identifier(table.target_schema), n=sql.SQL(table.target_table)
            )
        )
        started = time.monotonic()
        with conn.cursor() as cur:
            for start in range(0, len(data), 2000):
                batch = data[start : start + 2000]
                with conn.transaction():
                    cur.executemany(
                        statement, [[*(r[c] for c in columns), i] for i, r in enumerate(batch)]
                    )
        return len(data) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=12_000, help="events/s offered")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="sink config override"
    )
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    result = run(args.events, args.rate, args.batch_size, overrides)
    print("| metric | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value:,.3f} |" if isinstance(value, float) else f"| {key} | {value} |")


if __name__ == "__main__":
    main()
