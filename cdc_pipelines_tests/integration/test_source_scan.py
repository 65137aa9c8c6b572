"""The source scan against the devstack's Cassandra: the protocol it speaks, a slice whose
connection breaks mid-scan, and the table shapes that used to break a slice (static-only
partitions, ``time`` keys with nanoseconds, hostile but valid column names).

Connections are broken for real: the test shuts down the sockets of the scan's session while
the scan is paging, as a server or network dropping them would. Fails (never skips) when a
service is unreachable.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.util import Time
from psycopg import sql

from cdc_pipelines.config import ScyllaConnection, TableSpec, parse_config
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.postgres.key_reads import read_target_rows
from cdc_pipelines.reconcile import diff_step
from cdc_pipelines.reconcile.diff_step import (
    DIFFERING_COLUMN,
    SLICE_READ_ATTEMPTS,
    diff_table_slice,
    read_source_slice,
)
from cdc_pipelines.reconcile.index_step import build_index
from cdc_pipelines.reconcile.scratch import ScratchLayout, read_candidates
from cdc_pipelines.replicated_table import ReplicatedTable, resolve
from cdc_pipelines.rows.keys import driver_keys
from cdc_pipelines.scylla.key_reads import read_source_rows
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import ConnectionSettings
from cdc_pipelines_tests.declarations import replicated

T0 = 1_700_000_000_000_000
SCAN_ROWS = 3_000
PAGE_ROWS = 100  # the smallest fetch size the declaration allows: many pages per slice
BREAK_AT_REQUEST = 5  # the scan's prepare, then a few pages, then its connection breaks
VERSION = "_cdc_version_us"


def one_slice_table(keyspace: str, columns: str, *, scylla: str = "", keys: str = "[id]") -> Any:
    """A declaration of ``keyspace.t`` read as one slice, page by page, one range at a time."""
    text = (
        f"scylla: {{fetch_size: {PAGE_ROWS}, concurrency: 1{scylla}}}\n"
        f"tables:\n  - source: {keyspace}.t\n    target: public.t\n"
        f"    partition_key: {keys}\n    slices: 1\n    columns: {{{columns}}}\n"
    )
    return resolve(parse_config(text, "<scan test>", {}), f"{keyspace}.t")


@pytest.fixture
def seeded(cql_session: Any, keyspace: str) -> ReplicatedTable:
    cql_session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, v text)")
    insert = cql_session.prepare(f"INSERT INTO {keyspace}.t (id, v) VALUES (?, ?)")
    execute_concurrent_with_args(
        cql_session, insert, [(i, f"value {i}") for i in range(SCAN_ROWS)], concurrency=64
    )
    return one_slice_table(keyspace, "id: int, v: text")


def break_connections(session: Session) -> None:
    """Shut down the sockets of every connection of ``session``'s pools, as a server would."""
    for pool in session.get_pools():
        pool._connection._socket.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]


class BreakingSessions:
    """A session factory for :func:`read_source_slice` whose first ``broken`` sessions lose
    their connections after ``BREAK_AT_REQUEST`` requests, in the middle of the scan."""

    def __init__(self, broken: int) -> None:
        self.broken = broken
        self.opened = 0

    @contextmanager
    def __call__(
        self, settings: ConnectionSettings, connection: ScyllaConnection | None
    ) -> Iterator[Session]:
        with cql_session(settings, connection) as session:
            self.opened += 1
            if self.opened <= self.broken:
                requests = 0

                def on_request(*_: object, **__: object) -> None:
                    nonlocal requests
                    requests += 1
                    if requests == BREAK_AT_REQUEST:
                        break_connections(session)

                session.add_request_init_listener(on_request)
            yield session


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == diff_step.__name__ and r.levelno == logging.WARNING
    ]


def test_a_slice_whose_connection_breaks_mid_scan_still_returns_every_row_once(
    seeded: ReplicatedTable, settings: ConnectionSettings, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = BreakingSessions(broken=1)
    reported: list[int] = []
    with caplog.at_level(logging.WARNING, logger=diff_step.__name__):
        rows = read_source_slice(seeded, "00", settings, reported.append, session_factory=sessions)
    ids = rows.column("id").to_pylist()
    assert sorted(ids) == list(range(SCAN_ROWS))  # every row, none twice
    assert rows.column("v").to_pylist()[ids.index(7)] == "value 7"
    assert sessions.opened == 2  # the broken read, then one on a new session
    retries = retry_warnings(caplog)
    assert len(retries) == 1
    assert f"{seeded.source}: slice 00" in retries[0].getMessage()
    assert "read 1 of 3" in retries[0].getMessage()
    assert sum(reported) == SCAN_ROWS  # progress hears of each row once


def test_a_slice_whose_connection_keeps_breaking_names_table_slice_attempts_and_fix(
    seeded: ReplicatedTable,
    settings: ConnectionSettings,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diff_step, "SLICE_RETRY_BACKOFF_S", 0.0)
    sessions = BreakingSessions(broken=SLICE_READ_ATTEMPTS)
    with (
        caplog.at_level(logging.WARNING, logger=diff_step.__name__),
        pytest.raises(ServiceError) as caught,
    ):
        read_source_slice(seeded, "00", settings, session_factory=sessions)
    message = str(caught.value)
    assert f"{seeded.source}: slice 00" in message
    assert f"all {SLICE_READ_ATTEMPTS} attempts" in message
    assert "check that the CQL endpoint is up" in message
    assert sessions.opened == SLICE_READ_ATTEMPTS
    assert len(retry_warnings(caplog)) == SLICE_READ_ATTEMPTS - 1


def test_an_endpoint_that_refuses_connections_is_retried_then_named(
    seeded: ReplicatedTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diff_step, "SLICE_RETRY_BACKOFF_S", 0.0)
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    nowhere = ConnectionSettings(scylla_port=closed_port)
    with pytest.raises(ServiceError, match=rf"slice 00 .* all {SLICE_READ_ATTEMPTS} attempts"):
        read_source_slice(seeded, "00", nowhere)


def test_a_value_that_cannot_be_read_is_not_retried(
    cql_session: Any, keyspace: str, settings: ConnectionSettings
) -> None:
    cql_session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, v text)")
    cql_session.execute(f"INSERT INTO {keyspace}.t (id, v) VALUES (1, 'not a number')")
    table = one_slice_table(keyspace, "id: int, v: int")  # declared int, stored text
    sessions = BreakingSessions(broken=0)
    with pytest.raises(ReconcileError):
        read_source_slice(table, "00", settings, session_factory=sessions)
    assert sessions.opened == 1


@pytest.mark.parametrize("declared", [None, 3, 4, 5])
def test_the_session_speaks_protocol_v4_unless_another_is_declared(
    settings: ConnectionSettings, keyspace: str, declared: int | None
) -> None:
    scylla = "" if declared is None else f", protocol_version: {declared}"
    table = one_slice_table(keyspace, "id: int", scylla=scylla)
    expected = 4 if declared is None else declared
    with cql_session(settings, table.scylla) as session:
        assert session.execute("SELECT release_version FROM system.local").one() is not None
        assert session.cluster.protocol_version == expected
        connections = [pool._connection for pool in session.get_pools()]  # type: ignore[attr-defined]
        assert connections and {c.protocol_version for c in connections} == {expected}


def test_a_static_only_partition_is_no_row_and_does_not_fail_its_slice(
    cql_session: Any, keyspace: str, settings: ConnectionSettings
) -> None:
    cql_session.execute(
        f"CREATE TABLE {keyspace}.t (id int, line int, shared text STATIC, v text, "
        "PRIMARY KEY (id, line))"
    )
    cql_session.execute(f"INSERT INTO {keyspace}.t (id, shared) VALUES (1, 'only static')")
    cql_session.execute(f"INSERT INTO {keyspace}.t (id, line, shared, v) VALUES (2, 1, 's', 'a')")
    cql_session.execute(f"INSERT INTO {keyspace}.t (id, line, v) VALUES (2, 2, 'b')")
    table = replicated(
        TableSpec.model_validate(
            {
                "source": f"{keyspace}.t",
                "target": "public.t",
                "partition_key": ["id"],
                "clustering_key": ["line"],
                "columns": {"id": "int", "line": "int", "shared": "text", "v": "text"},
            }
        ),
        slices=1,
    )
    rows = read_source_slice(table, "00", settings).sort_by("line").to_pylist()
    assert [(r["id"], r["line"], r["shared"], r["v"]) for r in rows] == [
        (2, 1, "s", "a"),
        (2, 2, "s", "b"),
    ]


def test_time_keys_keep_their_nanoseconds_from_the_scan_to_the_key_re_read(
    cql_session: Any, keyspace: str, settings: ConnectionSettings
) -> None:
    cql_session.execute(
        f"CREATE TABLE {keyspace}.t (at time, seq time, v text, PRIMARY KEY (at, seq))"
    )
    times = [1_000_000_123, 45_296_789_012_345, 86_399_999_999_998, 7]
    insert = cql_session.prepare(f"INSERT INTO {keyspace}.t (at, seq, v) VALUES (?, ?, ?)")
    for i, nanos in enumerate(times):
        cql_session.execute(insert, (Time(nanos), Time(nanos + 1), f"row {i}"))
    table = replicated(
        TableSpec.model_validate(
            {
                "source": f"{keyspace}.t",
                "target": "public.t",
                "partition_key": ["at"],
                "clustering_key": ["seq"],
                "columns": {"at": "time", "seq": "time", "v": "text"},
            }
        ),
        slices=1,
    )
    scanned = read_source_slice(table, "00", settings)
    keys = driver_keys(scanned.select(["at", "seq"]), table.canonical)
    assert sorted(keys) == sorted((Time(n), Time(n + 1)) for n in times)
    reread = read_source_rows(cql_session, table, keys)
    assert all(row is not None for row in reread)
    assert sorted(row.values[2] for row in reread if row) == [f"row {i}" for i in range(4)]


HOSTILE_COLUMNS = {
    "id": "int",
    "Status": "text",
    "status": "text",
    "kind": "text",
    "_cdc_verify_position": "int",
    "pct%": "text",
    "Mixed Case": "text",
    'quote"inside': "text",
    "naïve_ключ": "text",
    "_token": "text",
}


def test_case_only_duplicates_and_hostile_names_stay_apart_through_scan_index_and_diff(
    cql_session: Any,
    keyspace: str,
    pg_schema: str,
    postgres_dsn: str,
    settings: ConnectionSettings,
    tmp_path: Path,
) -> None:
    spec = TableSpec.model_validate(
        {
            "source": f"{keyspace}.t",
            "target": f"{pg_schema}.t",
            "partition_key": ["id"],
            "columns": HOSTILE_COLUMNS,
            "exclude": ["_token"],  # refused unless excluded: the target index uses the name
        }
    )
    table = replicated(spec, slices=1)
    quoted = {name: '"' + name.replace('"', '""') + '"' for name in HOSTILE_COLUMNS}
    cql_session.execute(
        f"CREATE TABLE {keyspace}.t ("
        + ", ".join(f"{quoted[n]} {t}" for n, t in HOSTILE_COLUMNS.items())
        + ', PRIMARY KEY ("id"))'
    )
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for statement in create_statements(spec, VERSION):
            conn.execute(statement)
    written = [n for n in HOSTILE_COLUMNS if n != "_token"]
    insert = cql_session.prepare(
        f"INSERT INTO {keyspace}.t ({', '.join(quoted[n] for n in HOSTILE_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in HOSTILE_COLUMNS)}) USING TIMESTAMP {T0}"
    )

    def values(i: int) -> dict[str, object]:
        row: dict[str, object] = {n: f"{n} {i}" for n in HOSTILE_COLUMNS}
        return {**row, "id": i, "_cdc_verify_position": -i, "Status": "OPEN", "status": "open"}

    for i in range(20):
        cql_session.execute(insert, tuple(values(i).values()))
    target = sql.Identifier(pg_schema, "t")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        names = sql.SQL(", ").join(sql.Identifier(n) for n in [*written, VERSION])
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(target, names)
        with conn.cursor() as cursor, cursor.copy(copy_in) as copy:
            for i in range(20):
                copy.write_row([*(values(i)[n] for n in written), T0])
        conn.execute(
            sql.SQL("UPDATE {} SET {} = 'CLOSED' WHERE id = 3").format(
                target, sql.Identifier("Status")
            )
        )
    layout = ScratchLayout(tmp_path, table.source)
    build_index(table, settings, layout)
    outcome = diff_table_slice(table, "00", settings, layout)
    assert (outcome.source_rows, outcome.target_rows) == (20, 20)
    assert (outcome.missing, outcome.extra, outcome.mismatched) == (0, 0, 1)
    candidates = read_candidates(Path(outcome.candidates_path)).to_pylist()
    assert [(c["id"], c[DIFFERING_COLUMN]) for c in candidates] == [(3, ["Status"])]
    with psycopg.connect(postgres_dsn) as conn:
        (found,) = read_target_rows(conn, table, [(3,)])
    assert found is not None
    by_name = dict(zip(table.canonical.column_names, found.values, strict=True))
    assert (by_name["Status"], by_name["status"], by_name["_cdc_verify_position"]) == (
        "CLOSED",
        "open",
        -3,
    )
