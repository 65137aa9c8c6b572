"""Replication health recorded as data: the ``replication_checks`` job observes a table that
streams through the real sink connector and evaluates its checks against what it observed.

A table of the every-type declaration is written at the source through the emulated CDC
source, applied by the JDBC sink, then observed with the sink running (caught up) and with
it paused (behind); the observations carry the numbers the UI plots and the checks agree
with them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_config
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.health import HEALTH_OBSERVER
from cdc_pipelines.defs.jobs import REPLICATION_CHECKS_JOB
from cdc_pipelines.defs.names import TableNames, table_names
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines_tests.declarations import all_types_declaration
from cdc_pipelines_tests.e2e.tables import both_sides
from cdc_pipelines_tests.e2e.test_streaming_path import row

ROWS = 40
LATE_ROWS = 7
APPLY_TIMEOUT_S = 120.0
COMMIT_TIMEOUT_S = 60.0


def _target_count(postgres_dsn: str, schema: str) -> int:
    with psycopg.connect(postgres_dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.all_types").format(sql.Identifier(schema))
        return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def _wait_for_rows(postgres_dsn: str, schema: str, rows: int) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    count = -1
    while time.monotonic() < deadline:
        count = _target_count(postgres_dsn, schema)
        if count == rows:
            return
        time.sleep(0.5)
    pytest.fail(f"the sink applied {count} of {rows} rows in {APPLY_TIMEOUT_S:.0f}s")


def observe_caught_up(
    defs: dg.Definitions, instance: dg.DagsterInstance, names: TableNames
) -> tuple[dict[dg.AssetKey, Mapping[str, object]], dict[str, dg.AssetCheckEvaluation]]:
    """Observe until the sink's committed offsets reach the topic's end (Connect commits a
    sink's offsets every few seconds, after the rows are written)."""
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        observed, checks = observe(defs, instance, names)
        lag = observed[names.postgres_key].get("lag_messages")
        if lag == 0 or time.monotonic() > deadline:
            return observed, checks
        time.sleep(1)


@pytest.fixture
def streaming(cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name):
    """The every-type table with its sink connector running, ``ROWS`` rows applied."""
    config = all_types_declaration(unique_name, slices=4)
    table = config.tables[0]
    client = ConnectClient(connect_url)
    sink = sink_connector_config(config, table)
    with both_sides(cql_session, postgres_dsn, config, table):
        client.apply([sink])
        try:
            source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
            source.upsert([row(i) for i in range(ROWS)], now_us())
            source.flush()
            _wait_for_rows(postgres_dsn, unique_name, ROWS)
            yield config, source, client, sink.name
        finally:
            client.delete(sink.name)


def observe(
    defs: dg.Definitions, instance: dg.DagsterInstance, names: TableNames
) -> tuple[dict[dg.AssetKey, Mapping[str, object]], dict[str, dg.AssetCheckEvaluation]]:
    """One run of the job: each asset's observation metadata and the PostgreSQL asset's checks."""
    result = defs.resolve_job_def(REPLICATION_CHECKS_JOB).execute_in_process(instance=instance)
    assert result.success
    observed = {}
    for key in (names.scylla_key, names.kafka_key, names.postgres_key):
        (record,) = instance.fetch_observations(key, limit=1).records
        assert record.run_id == result.run_id
        observation = record.asset_observation
        assert observation is not None
        observed[key] = {label: entry.value for label, entry in observation.metadata.items()}
    checks = {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == names.postgres_key
    }
    return observed, checks


def test_health_is_observed_as_numbers_and_the_checks_agree_with_them(
    streaming, instance, postgres_dsn, unique_name
):
    config, source, client, sink = streaming
    (names,) = table_names(config)
    defs = build_definitions(config)

    observed, checks = observe_caught_up(defs, instance, names)
    target = observed[names.postgres_key]
    assert target["observed_by"] == HEALTH_OBSERVER
    assert (target["source_rows"], target["target_rows"], target["row_difference"]) == (
        ROWS,
        ROWS,
        0,
    )
    assert target["lag_messages"] == 0
    assert (target["sink_connector"], target["sink_state"]) == (sink, "RUNNING")
    assert target["tasks_running"] >= 1 and target["tasks_failed"] == 0
    assert "missing" not in target  # never reconciled: no verdict to show
    assert observed[names.scylla_key]["source_rows"] == ROWS
    assert observed[names.kafka_key]["end_offsets"] >= ROWS
    assert checks["lag_within_slo"].passed, checks["lag_within_slo"].description
    assert checks["freshness"].passed, checks["freshness"].description
    assert checks["row_count_parity"].passed, checks["row_count_parity"].description
    rate = checks["discrepancy_rate"]
    assert not rate.passed and rate.severity == dg.AssetCheckSeverity.WARN
    assert "never reconciled" in (rate.description or "")

    # The sink stops consuming; rows keep arriving at the source: lag shows in messages.
    client.pause(sink)
    try:
        time.sleep(2)  # a paused task stops polling within its next poll
        source.upsert([row(i) for i in range(ROWS, ROWS + LATE_ROWS)], now_us())
        source.flush()
        behind, behind_checks = observe(defs, instance, names)
        assert behind[names.postgres_key]["lag_messages"] == LATE_ROWS
        assert behind[names.postgres_key]["sink_state"] == "PAUSED"
        assert behind[names.postgres_key]["source_rows"] == ROWS + LATE_ROWS
        assert _target_count(postgres_dsn, unique_name) == ROWS
        # The lag SLO of the every-type declaration allows these messages; parity counts the
        # rows still in flight as allowed, so it passes while the stream is behind.
        parity = behind_checks["row_count_parity"]
        assert parity.metadata["in_flight"].value == LATE_ROWS
        assert parity.metadata["difference"].value == LATE_ROWS
    finally:
        client.resume(sink)
    _wait_for_rows(postgres_dsn, unique_name, ROWS + LATE_ROWS)
    caught_up, _ = observe_caught_up(defs, instance, names)
    assert caught_up[names.postgres_key]["lag_messages"] == 0
    assert caught_up[names.postgres_key]["target_rows"] == ROWS + LATE_ROWS
