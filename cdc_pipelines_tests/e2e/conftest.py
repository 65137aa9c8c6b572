"""Fixtures of the end-to-end tests: a table replicated through the real streaming path, and
a small table written to both sides directly (one row short in PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_config
from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.ring.slices import slice_indices
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines_tests.declarations import all_types_declaration
from cdc_pipelines_tests.e2e.tables import both_sides
from cdc_pipelines_tests.e2e.test_streaming_path import row

ROWS = 300
APPLY_TIMEOUT_S = 120
ITEMS_ROWS = 12
"""Rows of the small ``items`` table in ScyllaDB; PostgreSQL lacks the last one (id 11)."""
ITEMS_MISSING_ID = ITEMS_ROWS - 1
ITEMS_SLICES = 4


def items_partition_of(cql_session, names: TableNames, key: int) -> str:
    """The partition key of the slice holding ``items`` row ``key``, by the server's token()."""
    (token,) = cql_session.execute(
        f"SELECT token(id) FROM {names.spec.keyspace}.items WHERE id = %s", (key,)
    ).one()
    (index,) = slice_indices([token], names.slice_count)
    return names.slices[int(index)]


@pytest.fixture
def items_declaration(
    tmp_path: Path, keyspace: str, pg_schema: str, cql_session, postgres_dsn: str
) -> Path:
    """A small replicated table on both sides, one row short in PostgreSQL, so jobs really run.

    No connector is deployed: the rows are written to both sides directly, and the table's
    topic does not exist.
    """
    cql_session.execute(f"CREATE TABLE {keyspace}.items (id int PRIMARY KEY, label text)")
    for i in range(ITEMS_ROWS):
        cql_session.execute(f"INSERT INTO {keyspace}.items (id, label) VALUES ({i}, 'item {i}')")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        table = sql.Identifier(pg_schema, "items")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id integer PRIMARY KEY, label text, _cdc_version_us bigint)"
            ).format(table)
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT i, 'item ' || i, 1 FROM generate_series(0, %s) i"
            ).format(table),
            (ITEMS_MISSING_ID - 1,),
        )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""\
version: 1
connectors:
  sink_name_prefix: {keyspace}-sink
tables:
  - source: {keyspace}.items
    target: {pg_schema}.items
    description: Items for the end-to-end test.
    partition_key: [id]
    slices: {ITEMS_SLICES}
    columns: {{id: int, label: text}}
    expectations:
      - {{kind: not_null, column: label}}
"""
    )
    return path


@pytest.fixture
def replicated(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, settings):
    """The every-type table with ``ROWS`` rows streamed through a sink that is then removed."""
    config = all_types_declaration(unique_name, slices=4)
    table = config.tables[0]
    with both_sides(cql_session, postgres_dsn, config, table):
        client = ConnectClient(connect_url)
        sink = sink_connector_config(config, table)
        client.apply([sink])
        source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
        rows = [
            row(i, region=("eu-west", "us-east", "ap-south")[i % 3], c_float=i / 8, c_double=i / 3)
            for i in range(ROWS)
        ]
        source.upsert(rows, now_us())
        source.flush()
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        target = sql.SQL("SELECT count(*) FROM {}.all_types").format(sql.Identifier(unique_name))
        count = 0
        while count < ROWS and time.monotonic() < deadline:
            with psycopg.connect(postgres_dsn) as conn:
                count = conn.execute(target).fetchone()[0]
            time.sleep(0.5)
        client.delete(sink.name)  # drift from here on is the test's own, not the stream's
        assert count == ROWS, f"the sink applied {count} of {ROWS} rows"
        yield config, table, source, rows
