"""Every table of the shipped ``pipeline.yaml`` streams through Connect and reconciles clean.

The declaration is the one a user starts from: every CQL type (durations included), masked
and excluded columns, a user type, reserved and mixed-case names. It is moved into the
test's own keyspace, schema and topics, so the demo's tables are left alone.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import psycopg
import pytest

from cdc_pipelines.config import parse_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_configs
from cdc_pipelines.demo.data import demo_rows
from cdc_pipelines.demo.run import wait_for_rows
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.reconcile.table_run import ReconcileOptions, run_reconciliation
from cdc_pipelines.replicated_table import resolve_all
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.schema import create_source_tables

SHIPPED = Path(__file__).resolve().parents[2] / "pipeline.yaml"
ROWS_PER_TABLE = 200


def moved(text: str, name: str) -> str:
    """The shipped declaration with its keyspaces, schemas, topics and connectors renamed."""
    text = re.sub(r"(?m)^(\s*-?\s*(?:source|target): )demo\.", rf"\g<1>{name}.", text)
    text = re.sub(r"(?m)^(\s*topic_prefix: )\S+", rf"\g<1>{name}", text)
    text = re.sub(r"(?m)^(\s*sink_name_prefix: )\S+", rf"\g<1>{name}-sink", text)
    return re.sub(r"(?m)^(\s*dlq_topic: )\S+", rf"\g<1>{name}-dlq", text)


@pytest.fixture
def shipped(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, settings):
    config = parse_config(moved(SHIPPED.read_text(), unique_name), str(SHIPPED))
    assert {t.keyspace for t in config.tables} == {unique_name}
    create_source_tables(cql_session, config)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for table in config.tables:
            apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
    client = ConnectClient(connect_url)
    sinks = sink_connector_configs(config)
    client.apply(sinks)
    try:
        for table in config.tables:
            source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
            source.upsert(demo_rows(table, ROWS_PER_TABLE), now_us())
            source.flush()
            wait_for_rows(settings, table, ROWS_PER_TABLE, lambda _line: None)
        yield config
    finally:
        for sink in sinks:
            client.delete(sink.name)
        cql_session.execute(f'DROP KEYSPACE IF EXISTS "{unique_name}"')
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def test_every_shipped_table_reconciles_with_no_discrepancy(shipped, settings, tmp_path):
    tables = resolve_all(shipped)
    assert len(tables) >= 2
    for table in tables:
        report = run_reconciliation(
            table, settings, ReconcileOptions(scratch=tmp_path, workers=1, settle_seconds=0)
        )
        assert (report.source_rows, report.target_rows) == (ROWS_PER_TABLE, ROWS_PER_TABLE)
        found = (report.missing, report.extra, report.mismatched, report.target_ahead)
        assert found == (0, 0, 0, 0), (table.source, report.slices)
        assert report.settled, report.to_json()


def test_masked_columns_are_compared_and_repaired_as_the_stream_masks_them(
    shipped, settings, tmp_path, postgres_dsn
):
    """``demo.orders`` hashes ``email`` in a Connect transform: repair must write the same hash
    the sink wrote (never NULL), and a tampered hash must count as a mismatch."""
    (orders,) = [t for t in resolve_all(shipped) if t.spec.table == "orders"]
    assert "email" in orders.spec.mask
    target = f'"{orders.spec.target_schema}"."{orders.spec.target_table}"'
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        streamed = dict(conn.execute(f'SELECT "order", email FROM {target}').fetchall())
        assert all(len(v) == 64 for v in streamed.values())  # hex SHA-256, not the address
        conn.execute(
            f'DELETE FROM {target} WHERE "order" IN (SELECT "order" FROM {target} LIMIT 50)'
        )
    dry = ReconcileOptions(scratch=tmp_path, workers=1, settle_seconds=0)
    repaired = run_reconciliation(orders, settings, dataclasses.replace(dry, repair=True))
    assert repaired.missing == 50 and repaired.settled
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        restored = dict(conn.execute(f'SELECT "order", email FROM {target}').fetchall())
        assert restored == streamed  # the very hashes the sink wrote
        conn.execute(
            f"UPDATE {target} SET email = 'tampered' "
            f'WHERE "order" IN (SELECT "order" FROM {target} LIMIT 5)'
        )
    tampered = run_reconciliation(orders, settings, dry)
    assert (tampered.mismatched, tampered.missing, tampered.extra) == (5, 0, 0)
