"""Lag-aware verification against real Kafka, Cassandra and PostgreSQL.

Kafka: offsets are produced and committed for real, and the catch-up wait is checked both ways.
Cassandra + PostgreSQL: rows are written with ``USING TIMESTAMP`` so the cut-off is exact,
the target is filled by repair itself, and candidates are reclassified from fresh reads.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
import pytest
from cassandra.util import Date, Duration, Time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.offsets import (
    CatchUpMethod,
    TopicWatch,
    committed_offsets,
    end_offsets,
    sink_group,
    wait_until_caught_up,
)
from cdc_pipelines.postgres.audit import AuditTables
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.postgres.key_reads import read_target_rows
from cdc_pipelines.postgres.repair import apply_repair, plan_repair
from cdc_pipelines.reconcile import verify
from cdc_pipelines.reconcile.verify import (
    Candidate,
    CandidateKind,
    verify_discrepancies,
)
from cdc_pipelines.replicated_table import resolve_spec
from cdc_pipelines.rows.layout import upsert_layout
from cdc_pipelines.scylla.key_reads import read_source_rows
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines_tests.declarations import all_types_declaration, replicated

VERSION = "_cdc_version_us"
PARTITIONS = 3
UNREACHABLE = "127.0.0.1:1"
T0 = 1_700_000_000_000_000  # µs
CUTOFF = T0 + 1_000


# --------------------------------------------------------------------------- Kafka


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = f"verify.{unique_name}"
    for future in admin.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)]
    ).values():
        future.result(timeout=30)
    yield name
    for future in admin.delete_topics([name]).values():
        future.result(timeout=30)


def produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, count in counts.items():
        for i in range(count):
            producer.produce(topic, value=f"m{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def test_end_and_committed_offsets(kafka_bootstrap: str, topic: str, unique_name: str) -> None:
    produce(kafka_bootstrap, topic, {0: 5, 1: 3})
    group = sink_group(f"pg-sink-{unique_name}")

    assert end_offsets(kafka_bootstrap, topic) == {0: 5, 1: 3, 2: 0}
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: None, 1: None, 2: None}
    commit(kafka_bootstrap, group, topic, {0: 4})
    assert committed_offsets(kafka_bootstrap, group, topic) == {0: 4, 1: None, 2: None}
    assert group == f"connect-pg-sink-{unique_name}"


def test_wait_until_caught_up_both_ways(kafka_bootstrap: str, topic: str, unique_name: str) -> None:
    produce(kafka_bootstrap, topic, {0: 5, 1: 3})
    targets = end_offsets(kafka_bootstrap, topic)
    group = sink_group(unique_name)
    commit(kafka_bootstrap, group, topic, {0: 5, 1: 2})

    behind = wait_until_caught_up(
        kafka_bootstrap, group, topic, targets, timeout_s=1.0, poll_interval_s=0.2
    )

    assert not behind and behind.method is CatchUpMethod.OFFSETS
    assert behind.behind == {1: (2, 3)}  # partition 2 had nothing to consume
    assert f"{topic}[1] at 2 < 3" in behind.detail

    committer = threading.Timer(1.0, commit, (kafka_bootstrap, group, topic, {1: 3}))
    committer.start()
    try:
        caught = wait_until_caught_up(
            kafka_bootstrap, group, topic, targets, timeout_s=30, poll_interval_s=0.2
        )
    finally:
        committer.join()

    assert caught and caught.method is CatchUpMethod.OFFSETS and caught.behind == {}
    assert 0.8 <= caught.waited_s < 30
    produce(kafka_bootstrap, topic, {1: 4})  # new messages after the scan do not matter
    assert wait_until_caught_up(kafka_bootstrap, group, topic, targets, timeout_s=5)


def test_unreachable_kafka_falls_back_to_the_settle_window() -> None:
    started = time.monotonic()

    result = wait_until_caught_up(
        UNREACHABLE,
        "connect-x",
        "t",
        {0: 5},
        timeout_s=5,
        settle_window_s=0.5,
        request_timeout_s=1.0,
    )

    assert result and result.method is CatchUpMethod.SETTLE_WINDOW
    assert UNREACHABLE in result.detail and "settle window of 0.5 s" in result.detail
    assert time.monotonic() - started >= 0.5
    with pytest.raises(ServiceError, match=UNREACHABLE):
        end_offsets(UNREACHABLE, "t", timeout_s=1.0)


def test_a_topic_watch_says_unchanged_until_any_partition_gains_a_record(
    kafka_bootstrap: str, topic: str, unique_name: str
) -> None:
    produce(kafka_bootstrap, topic, {0: 2})
    watch = TopicWatch(kafka_bootstrap, topic)
    mark = watch.mark()
    assert mark == {0: 2, 1: 0, 2: 0}
    assert watch.unchanged_since(mark) and watch.unchanged_since(mark)
    produce(kafka_bootstrap, topic, {2: 1})
    assert not watch.unchanged_since(mark)
    assert not TopicWatch(kafka_bootstrap, topic).unchanged_since(None)  # unknown: moved
    absent = TopicWatch(kafka_bootstrap, f"absent.{unique_name}")
    assert absent.mark() is None and not absent.unchanged_since({0: 0})


def test_a_missing_topic_is_named(kafka_bootstrap: str, unique_name: str) -> None:
    with pytest.raises(ServiceError, match=f"topic 'absent.{unique_name}' does not exist"):
        end_offsets(kafka_bootstrap, f"absent.{unique_name}")


# --------------------------------------------------------------------------- re-read and verdicts


COLUMNS = {
    "id": "int",
    "ck": "text",
    "name": "text",
    "amount": "decimal",
    "at": "timestamp",
    "tags": "set<text>",
    "score": "double",
}


def orders_table(keyspace: str, schema: str) -> TableSpec:
    return TableSpec.model_validate(
        {
            "source": f"{keyspace}.orders",
            "target": f"{schema}.orders",
            "partition_key": ["id"],
            "clustering_key": ["ck"],
            "columns": COLUMNS,
            "tolerances": {"float_abs": 1e-6},
        }
    )


@pytest.fixture
def orders(cql_session: Any, keyspace: str, pg_schema: str, postgres_dsn: str) -> TableSpec:
    cql_session.execute(
        f"CREATE TABLE {keyspace}.orders (id int, ck text, name text, amount decimal, at timestamp, "
        "tags set<text>, score double, PRIMARY KEY ((id), ck))"
    )
    table = orders_table(keyspace, pg_schema)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for statement in create_statements(table, VERSION):
            conn.execute(statement)
    return table


@pytest.fixture
def audit(pg_schema: str, postgres_dsn: str) -> Iterator[AuditTables]:
    tables = AuditTables(schema=f"{pg_schema}_audit")
    yield tables
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(tables.schema))
        )


def write_source(
    session: Any, keyspace: str, i: int, written_at: int, name: str | None = None
) -> None:
    statement = session.prepare(
        f"INSERT INTO {keyspace}.orders (id, ck, name, amount, at, tags, score) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
    session.execute(
        statement,
        (
            i,
            f"ck'{i}",
            name or f"name {i} ключ",
            Decimal(f"{i}.50"),
            dt.datetime(2024, 1, i, 12, 0, 0, 123000, tzinfo=dt.UTC),
            {f"t{i}", "o'brien"},
            i / 3,
            written_at,
        ),
    )


def key(i: int) -> tuple[object, ...]:
    return (i, f"ck'{i}")


def target_update(dsn: str, table: TableSpec, i: int, assignments: str, *params: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET " + assignments + " WHERE id = %s").format(
                sql.Identifier(table.target_schema, table.target_table)
            ),
            [*params, i],
        )


def _scans(dsn: str, table: TableSpec) -> tuple[int, int]:
    """The target's (sequential, index) scan counts so far."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = %s",
            (table.target_schema, table.target_table),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("unique_index", [True, False], ids=["key-index", "no-index"])
def test_keys_are_looked_up_through_the_key_index_not_by_scanning_the_table(
    orders: TableSpec, postgres_dsn: str, unique_index: bool
) -> None:
    """With a unique index on the key, a re-read never scans the target (its cost follows
    the keys, not the table); without one it still finds every key."""
    relation = sql.Identifier(orders.target_schema, orders.target_table)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, ck, name, {}) "
                "SELECT g, 'ck''' || g, 'n' || g, 1 FROM generate_series(1, 5000) AS g"
            ).format(relation, sql.Identifier(VERSION))
        )
        if not unique_index:
            constraint = conn.execute(
                "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                (relation.as_string(conn),),
            ).fetchone()
            assert constraint is not None
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    relation, sql.Identifier(constraint[0])
                )
            )
        conn.execute(sql.SQL("ANALYZE {}").format(relation))
    wanted = [key(i) for i in range(1, 5001, 2)]
    before = _scans(postgres_dsn, orders)
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.commit()
        rows = read_target_rows(conn, replicated(orders), wanted)
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.commit()
    assert [row.values[:2] if row else None for row in rows] == wanted
    deadline = time.monotonic() + 10
    while (after := _scans(postgres_dsn, orders)) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    sequential = after[0] - before[0]
    assert (sequential == 0 and after[1] > before[1]) if unique_index else sequential >= 1


@pytest.mark.parametrize("chunk", [verify.VERIFY_CHUNK, 3])
def test_candidates_are_reclassified_from_fresh_reads_and_repair_closes_them(
    cql_session: Any,
    keyspace: str,
    orders: TableSpec,
    postgres_dsn: str,
    audit: AuditTables,
    chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verify, "VERIFY_CHUNK", chunk)
    for i in (1, 2, 3, 7, 8, 9):
        write_source(cql_session, keyspace, i, T0)
    cql_session.execute(
        f"UPDATE {keyspace}.orders USING TIMESTAMP {T0 + 10} SET name = 'renamed' WHERE id = 1 AND ck = $$ck'1$$"
    )
    write_source(cql_session, keyspace, 4, T0 + 5_000)  # written after the scan's cut-off
    asked: list[int] = []

    def read_source(keys: Any) -> Any:
        asked.append(len(keys))
        return read_source_rows(cql_session, replicated(orders), keys)

    with psycopg.connect(postgres_dsn) as conn:
        read_target = partial(read_target_rows, conn, replicated(orders))
        fresh = read_source([key(i) for i in (1, 2, 3, 7, 8, 9)])
        assert fresh[0] is not None and fresh[0].version == T0 + 10  # max WRITETIME of the row
        at = fresh[0].values[upsert_layout(orders, VERSION).index("at")]
        assert isinstance(at, dt.datetime) and at.tzinfo is not None
        # The target as the sink left it: rows 2, 3, 7, 8, 9 written by repair, then drifted.
        seed = plan_repair(replicated(orders), [r.values for r in fresh[1:] if r is not None])
        apply_repair(conn, seed, audit=audit)
        extra = plan_repair(
            replicated(orders),
            [(5, "ck'5", "gone", None, None, None, None, T0 - 100)],
            run_id="extra-row",
        )
        apply_repair(conn, extra, audit=audit)
        target_update(postgres_dsn, orders, 2, "name = %s", "drifted")
        target_update(postgres_dsn, orders, 7, "score = score + %s", 1e-9)  # within float_abs
        target_update(postgres_dsn, orders, 8, f"{VERSION} = %s", T0 + 2_000)  # same values
        # Changed by hand and stamped newer than the source: no source change explains it.
        target_update(postgres_dsn, orders, 9, f"name = %s, {VERSION} = %s", "edited", T0 + 2_000)

        candidates = [
            Candidate(key(1), CandidateKind.MISSING),
            Candidate(key(2), CandidateKind.MISMATCHED),
            Candidate(key(3), CandidateKind.MISMATCHED),  # fixed in the meantime
            Candidate(key(4), CandidateKind.MISSING),
            Candidate(key(5), CandidateKind.EXTRA),
            Candidate(key(6), CandidateKind.MISSING),  # gone from both
            Candidate(key(7), CandidateKind.MISMATCHED),
            Candidate(key(8), CandidateKind.MISMATCHED),
            Candidate(key(9), CandidateKind.MISMATCHED),
            Candidate(key(1), CandidateKind.MISSING),  # duplicates are verified once
        ]
        result = verify_discrepancies(
            replicated(orders),
            candidates,
            cutoff_us=CUTOFF,
            read_source=read_source,
            read_target=read_target,
        )

        assert asked[1:] == ([3, 3, 3] if chunk == 3 else [9])  # 9 distinct keys, in chunks
        kinds = {c.key[0]: c.kind for c in result.confirmed}
        assert kinds == {
            1: CandidateKind.MISSING,
            2: CandidateKind.MISMATCHED,
            5: CandidateKind.EXTRA,
        }
        # Only the version moved: the data agrees.
        assert sorted(k[0] for k in result.resolved) == [3, 6, 7, 8]  # type: ignore[type-var]
        assert [k[0] for k in result.in_flight] == [4]  # written after the cut-off
        assert [(c.key[0], c.target_version) for c in result.target_ahead] == [(9, T0 + 2_000)]
        assert [r[0] for r in result.insert_rows] == [1]  # absent from the target
        assert result.insert_rows[0][2] == "renamed"
        assert [r[0] for r in result.upsert_rows] == [2]  # present but different
        assert [(d.key, d.scan_version) for d in result.delete_rows] == [(key(5), T0 - 100)]

        plan = plan_repair(
            replicated(orders), result.upsert_rows, result.delete_rows, inserts=result.insert_rows
        )
        outcome = apply_repair(conn, plan, audit=audit)
        assert (outcome.upserted, outcome.deleted, outcome.copied) == (2, 1, 1)

        again = verify_discrepancies(
            replicated(orders),
            [c for c in candidates if c.key not in (key(8), key(9))],
            cutoff_us=CUTOFF,
            read_source=read_source,
            read_target=read_target,
        )
    assert again.confirmed == ()
    assert sorted(k[0] for k in again.resolved) == [1, 2, 3, 5, 6, 7]  # type: ignore[type-var]
    assert [k[0] for k in again.in_flight] == [4]


def test_every_cql_type_round_trips_source_to_repair_to_verified_equal(
    cql_session: Any, keyspace: str, pg_schema: str, postgres_dsn: str, audit: AuditTables
) -> None:
    """A row of every CQL type: read from Cassandra, repaired into PostgreSQL, verified equal."""
    config = all_types_declaration(keyspace)
    create_source_tables(cql_session, config)
    (spec,) = config.tables
    table = resolve_spec(config, spec)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for statement in create_statements(spec, VERSION):
            conn.execute(statement)
    insert = cql_session.prepare(
        f'INSERT INTO {keyspace}.all_types (id, region, "order", "Mixed Case", c_bigint, c_smallint, '
        "c_tinyint, c_varint, c_decimal, c_float, c_double, c_boolean, c_text, c_ascii, c_blob, "
        "c_uuid, c_timeuuid, c_timestamp, c_date, c_time, c_duration, c_inet, c_list, c_set, "
        "c_list_uuid, c_frozen_list, c_map, c_tuple, c_udt) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "{street: 'Rue d''Été', zip: 75001}) USING TIMESTAMP ?"
    )
    cql_session.execute(
        insert,
        (
            1,
            "eu-'west'",
            7,
            "Mixed ✓",
            -(2**63),
            -(2**15),
            -128,
            -(10**40) - 7,
            Decimal("-12345678901234567890.001000"),
            float("inf"),
            float("nan"),
            True,
            "it's a \\ test\nwith ключ",
            "ascii",
            b"\x00\xff'\\",
            uuid.UUID(int=42),
            uuid.uuid1(),
            dt.datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=dt.UTC),
            Date(19_782),
            Time(86_399_999_999_999),
            Duration(14, 3, 1_000_000_007),
            "2001:db8::1",
            [3, 1, 2],
            {"b", "a'"},
            [uuid.UUID(int=1), uuid.UUID(int=2)],
            [2**62, -1],
            {"k'1": 1, "ключ": -2},
            (1, "x", -0.5),
            T0,
        ),
    )
    cql_session.execute(
        f"INSERT INTO {keyspace}.all_types (id, region, \"order\") VALUES (2, 'empty', 0) USING TIMESTAMP {T0}"
    )
    keys = [(1, "eu-'west'", 7), (2, "empty", 0)]

    with psycopg.connect(postgres_dsn) as conn:
        read_source = partial(read_source_rows, cql_session, table)
        read_target = partial(read_target_rows, conn, table)
        rows = [r.values for r in read_source(keys) if r is not None]
        assert len(rows) == 2
        plan = plan_repair(table, rows)
        assert apply_repair(conn, plan, audit=audit).upserted == 2
        result = verify_discrepancies(
            table,
            [Candidate(k, CandidateKind.MISMATCHED) for k in keys],
            cutoff_us=CUTOFF,
            read_source=read_source,
            read_target=read_target,
        )
    assert result.confirmed == () and result.in_flight == ()
    assert sorted(result.resolved) == sorted(keys)


def test_an_extra_row_is_confirmed_by_a_quorum_read_before_it_may_be_deleted(
    cql_session: Any, keyspace: str, orders: TableSpec, postgres_dsn: str, audit: AuditTables
) -> None:
    """A replica that missed a write answers "no such row"; the delete consistency's read
    finds it, so the target row is not confirmed extra (and never deleted)."""
    write_source(cql_session, keyspace, 1, T0)
    table = replicated(orders)
    with psycopg.connect(postgres_dsn) as conn:
        fresh = read_source_rows(cql_session, table, [key(1)])
        apply_repair(conn, plan_repair(table, [fresh[0].values]), audit=audit)  # type: ignore[union-attr]

        def stale_replica(keys: Any) -> Any:
            return [None] * len(keys)

        common = {
            "cutoff_us": CUTOFF,
            "read_source": stale_replica,
            "read_target": partial(read_target_rows, conn, table),
        }
        trusting = verify_discrepancies(table, [Candidate(key(1), CandidateKind.EXTRA)], **common)
        quorum = partial(read_source_rows, cql_session, table, consistency="QUORUM")
        checked = list(
            verify.verify_in_chunks(
                table, [Candidate(key(1), CandidateKind.EXTRA)], confirm_absent=quorum, **common
            )
        )
    assert [c.kind for c in trusting.confirmed] == [CandidateKind.EXTRA]
    assert checked[0].confirmed == () and checked[0].resolved == (key(1),)
