"""The end-to-end canary through the real streaming path: the ``cdc_canary`` job writes the
canary row at the source (with its change event, as the devstack's Cassandra has no CDC
log), the JDBC sink applies it, and the probe records how long PostgreSQL took to show it;
with the sink paused the row never arrives and the check says so.
"""

from __future__ import annotations

import os

import dagster as dg
import psycopg
import pytest
import requests
from psycopg import sql

from cdc_pipelines.config import parse_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_config
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.canary import CANARY_CHECK, CANARY_JOB, CANARY_OBSERVER
from cdc_pipelines.defs.names import table_names
from cdc_pipelines.observability import metrics
from cdc_pipelines_tests.e2e.tables import both_sides

PROBE_TIMEOUT_S = 15


def declaration(name: str) -> str:
    return f"""\
connectors:
  topic_prefix: {name}
  sink_name_prefix: {name}-sink
  dlq_topic: {name}-dlq
tables:
  - source: {name}.cdc_canary
    target: {name}.cdc_canary
    partition_key: [id]
    slices: 1
    columns: {{id: text, written_at_us: bigint}}
    canary: {{timeout_s: {PROBE_TIMEOUT_S}, stale_after_s: 5, emulate_cdc: true}}
"""


@pytest.fixture
def canary(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, pushgateway_url):
    """The canary table on both sides with its sink connector running."""
    config = parse_config(declaration(unique_name), f"<canary {unique_name}>")
    (table,) = config.tables
    client = ConnectClient(connect_url)
    sink = sink_connector_config(config, table)
    with both_sides(cql_session, postgres_dsn, config, table):
        client.apply([sink])
        try:
            client.wait_for_state(sink.name, "RUNNING")
            yield config, client, sink.name
        finally:
            client.delete(sink.name)
            metrics.delete_group(pushgateway_url, metrics.CANARY_JOB, {"table": table.source})


def pushed(pushgateway_url: str, source: str) -> dict[str, float]:
    """The canary gauges of ``source`` the Pushgateway holds."""
    text = requests.get(f"{pushgateway_url}/metrics", timeout=10).text
    found = {}
    for line in text.splitlines():
        if line.startswith("cdc_canary_") and f'table="{source}"' in line:
            found[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def run_canary(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    result = defs.resolve_job_def(CANARY_JOB).execute_in_process(instance=instance)
    assert result.success
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.check_name == CANARY_CHECK
    return evaluation


def test_the_canary_row_streams_through_the_sink_and_its_latency_is_recorded(
    canary, instance, pushgateway_url
):
    config, client, sink = canary
    (names,) = table_names(config)
    defs = build_definitions(config)

    arrived = run_canary(defs, instance)
    assert arrived.passed, arrived.description
    assert "reached" in (arrived.description or "")
    latency = arrived.metadata["canary_latency_s"].value
    assert isinstance(latency, float) and 0 < latency < PROBE_TIMEOUT_S
    (record,) = instance.fetch_observations(names.postgres_key, limit=1).records
    observed = record.asset_observation
    assert observed is not None
    assert observed.metadata["observed_by"].value == CANARY_OBSERVER
    assert observed.metadata["canary_latency_s"].value == pytest.approx(latency, abs=0.01)
    gauges = pushed(pushgateway_url, names.source)
    assert gauges[metrics.CANARY_LATENCY_SECONDS.name] == pytest.approx(latency, abs=0.01)
    assert gauges[metrics.CANARY_LAST_SUCCESS.name] == pytest.approx(record.timestamp, abs=30)
    with psycopg.connect(os.environ["CDC_POSTGRES_DSN"]) as conn:
        version = conn.execute(
            sql.SQL("SELECT written_at_us, _cdc_version_us FROM {} WHERE id = 'canary'").format(
                sql.Identifier(names.spec.target_schema, names.spec.target_table)
            )
        ).fetchone()
    assert version is not None and version[0] == version[1]  # the sink's write, from the event

    # The sink paused: the next canary never arrives, and the last arrival is older than
    # stale_after_s (5 s) by the time the probe gives up, so the check fails with ERROR.
    client.pause(sink)
    client.wait_for_state(sink, "PAUSED")
    try:
        missed = run_canary(defs, instance)
    finally:
        client.resume(sink)
    assert not missed.passed
    assert missed.severity == dg.AssetCheckSeverity.ERROR
    description = missed.description or ""
    assert f"did not reach {names.spec.target} in PostgreSQL within {PROBE_TIMEOUT_S}s" in (
        description
    ), description
    assert "the newest canary it holds was written" in description
    assert "connectors status" in description
    stale = pushed(pushgateway_url, names.source)
    # The last success stays the arrived canary's write time; the latency shows the wait.
    assert stale[metrics.CANARY_LAST_SUCCESS.name] <= gauges[metrics.CANARY_LAST_SUCCESS.name]
    assert stale[metrics.CANARY_LATENCY_SECONDS.name] >= PROBE_TIMEOUT_S


def test_a_canary_that_never_arrived_fails_the_check_with_error(canary, instance, pushgateway_url):
    config, client, sink = canary
    (names,) = table_names(config)
    client.pause(sink)
    client.wait_for_state(sink, "PAUSED")
    missed = run_canary(build_definitions(config), instance)
    assert not missed.passed
    assert missed.severity == dg.AssetCheckSeverity.ERROR
    assert "no canary has ever reached it" in (missed.description or ""), missed.description
    assert "last_arrival" not in missed.metadata
    # Never: 0, so CdcCanaryStale (time() - last success > 300) fires rather than stays silent.
    assert pushed(pushgateway_url, names.source)[metrics.CANARY_LAST_SUCCESS.name] == 0


def test_a_newer_value_already_in_postgresql_does_not_pass_for_the_probe(
    canary, instance, postgres_dsn
):
    """Another prober with a clock ahead (or this host's clock stepping back) left a larger
    value in PostgreSQL; with the sink stopped, this probe's own value never arrives."""
    config, client, sink = canary
    (names,) = table_names(config)
    client.pause(sink)
    client.wait_for_state(sink, "PAUSED")
    target = sql.Identifier(names.spec.target_schema, names.spec.target_table)
    ahead_us = 10**18  # far in the future
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, written_at_us) VALUES (%s, %s) ON CONFLICT (id) "
                "DO UPDATE SET written_at_us = EXCLUDED.written_at_us"
            ).format(target),
            (names.spec.canary.key, ahead_us),
        )
    missed = run_canary(build_definitions(config), instance)
    assert not missed.passed, missed.description
    assert missed.severity == dg.AssetCheckSeverity.ERROR
    assert "later than this probe's" in (missed.description or ""), missed.description
    assert "last_arrival" not in missed.metadata  # a future value is no arrival
