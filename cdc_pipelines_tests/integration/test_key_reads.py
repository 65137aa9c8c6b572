"""Batched re-reads by key return exactly what one point read per key returns.

Rows are written to the devstack's Cassandra with known write times; hypothesis picks which
keys to ask for (written ones, absent ones, duplicates, timestamps below the millisecond);
every answer of :func:`read_source_rows` is compared with a plain ``SELECT … WHERE k = ?``
issued per key. Fails (never skips) when Cassandra is unreachable.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_pipelines.config import PipelineConfig, TableSpec, parse_config
from cdc_pipelines.scylla import key_reads
from cdc_pipelines.scylla.key_reads import read_source_rows
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines_tests.declarations import replicated
from cdc_pipelines_tests.unit.test_tokens import KEY_VALUES

T0 = 1_700_000_000_000_000

# name → (partition key types, clustering key types)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "single_bigint": (("bigint",), ()),
    "text_date": (("text", "date"), ()),
    "timestamp_inet_then_uuid_varint": (("timestamp", "inet"), ("uuid", "varint")),
    "blob_boolean_then_int": (("blob", "boolean"), ("int",)),
    "decimal_then_timeuuid": (("decimal",), ("timeuuid",)),
    "double_only": (("double",), ()),
}


def _declaration(keyspace: str) -> PipelineConfig:
    tables = []
    for name, (partition, clustering) in LAYOUTS.items():
        types = [*partition, *clustering]
        columns = ", ".join(f"k{i}: {t}" for i, t in enumerate(types))
        tables.append(
            f"  - source: {keyspace}.{name}\n"
            f"    target: public.{name}\n"
            f"    partition_key: [{', '.join(f'k{i}' for i in range(len(partition)))}]\n"
            f"    clustering_key: [{', '.join(f'k{len(partition) + i}' for i in range(len(clustering)))}]\n"
            f"    columns: {{{columns}, v: text}}\n"
        )
    return parse_config("tables:\n" + "".join(tables))


@pytest.fixture(scope="module")
def key_tables(cql_session: Any) -> Iterator[dict[str, TableSpec]]:
    name = f"keyreads_{uuid.uuid4().hex[:12]}"
    cql_session.execute(
        f"CREATE KEYSPACE {name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    config = _declaration(name)
    create_source_tables(cql_session, config)
    yield {t.table: t for t in config.tables}
    cql_session.execute(f"DROP KEYSPACE IF EXISTS {name}")


def _reference(session: Any, table: TableSpec, keys: Sequence[tuple[object, ...]]) -> list[Any]:
    """One point read per key, without the module under test."""
    where = " AND ".join(f"{n} = ?" for n in table.primary_key)
    statement = session.prepare(
        f"SELECT v, WRITETIME(v) FROM {table.keyspace}.{table.table} WHERE {where}"
    )
    answers = []
    for key in keys:
        row = session.execute(statement, key).one()
        answers.append(None if row is None else (row[0], row[1]))
    return answers


# Addresses also in the long form and as ipaddress objects: both name the same key.
VALUES = {
    **KEY_VALUES,
    "inet": st.ip_addresses().flatmap(lambda a: st.sampled_from([str(a), a.exploded, a])),
}


def _key(types: Sequence[str]) -> st.SearchStrategy[tuple[object, ...]]:
    return st.tuples(*(VALUES[t] for t in types))


@st.composite
def _case(
    draw: st.DrawFn, layout: str
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    partition, clustering = LAYOUTS[layout]
    types = [*partition, *clustering]
    written = draw(st.lists(_key(types), min_size=1, max_size=30))
    # Many keys sharing their other columns, so requests really batch.
    if len(types) > 1:
        shared = written[0]
        varying = draw(st.lists(_key(types), max_size=20))
        column = draw(st.integers(0, len(types) - 1))
        written += [
            tuple(v[i] if i == column else shared[i] for i in range(len(types))) for v in varying
        ]
    absent = draw(st.lists(_key(types), max_size=10))
    asked = draw(st.permutations(written + absent + written[:3]))
    return written, list(asked)


def rewrite(cql_session: Any, table: TableSpec, keys: list[Any], value: str = "row {n}") -> None:
    """The table emptied, then one row a key: value ``value`` and write time ``T0 + n``."""
    cql_session.execute(f"TRUNCATE {table.keyspace}.{table.table}")
    columns = ", ".join([*table.primary_key, "v"])
    insert = cql_session.prepare(
        f"INSERT INTO {table.keyspace}.{table.table} ({columns}) "
        f"VALUES ({', '.join('?' * (len(table.primary_key) + 1))}) USING TIMESTAMP ?"
    )
    for n, key in enumerate(keys):
        cql_session.execute(insert, (*key, value.format(n=n), T0 + n))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_batched_reads_equal_point_reads(
    cql_session: Any, key_tables: dict[str, TableSpec], layout: str
) -> None:
    table = key_tables[layout]

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=_case(layout))
    def check(case: tuple[list[tuple[object, ...]], list[tuple[object, ...]]]) -> None:
        written, asked = case
        rewrite(cql_session, table, written, "row {n} '✓'")

        rows = read_source_rows(cql_session, replicated(table), asked)

        got = [None if r is None else (r.values[-2], r.version) for r in rows]
        assert got == _reference(cql_session, table, asked)

    check()


def test_a_single_column_key_is_read_in_batches_not_one_by_one(
    key_tables: dict[str, TableSpec],
) -> None:
    table = key_tables["single_bigint"]
    plan = key_reads._plan(table, [(i,) for i in range(1000)])

    assert plan is not None and plan.singles == []
    assert key_reads._requests(plan) == 1000 // key_reads.IN_BATCH


def test_keys_the_server_would_store_differently_are_read_one_by_one(
    key_tables: dict[str, TableSpec],
) -> None:
    table = key_tables["timestamp_inet_then_uuid_varint"]
    exact = dt.datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    below_ms = exact.replace(microsecond=123456)
    later = exact + dt.timedelta(milliseconds=1)
    keys = [(t, "10.0.0.1", uuid.UUID(int=1), 5) for t in (exact, below_ms, later)]

    plan = key_reads._plan(table, keys)

    assert plan is not None and plan.varying == 0  # the timestamp varies, the rest is shared
    assert list(plan.groups.values()) == [[0, 2]] and plan.singles == [1]
    assert key_reads.match_value(exact, table.column("k0").cql_type) == 1_767_268_800_123
    with pytest.raises(key_reads.NotExact):
        key_reads.match_value(below_ms, table.column("k0").cql_type)
