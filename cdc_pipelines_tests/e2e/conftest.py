"""Fixtures of the end-to-end tests: a table replicated through the real streaming path."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_config
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines_tests.declarations import all_types_declaration
from cdc_pipelines_tests.e2e.test_streaming_path import row

ROWS = 300
APPLY_TIMEOUT_S = 120


@pytest.fixture
def replicated(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, settings):
    config = all_types_declaration(unique_name, slices=4)
    table = config.tables[0]
    create_source_tables(cql_session, config)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
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
    assert count == ROWS, f"the sink applied {count} of {ROWS} rows"
    client.delete(sink.name)  # drift from here on is the test's own, not the stream's
    yield config, table, source, rows
    cql_session.execute(f'DROP KEYSPACE IF EXISTS "{unique_name}"')
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name))
        )
