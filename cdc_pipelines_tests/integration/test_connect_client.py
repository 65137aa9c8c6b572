"""The Connect REST client against the real worker: validate, apply, lifecycle, offsets, restarts."""

from __future__ import annotations

import socket
import time

import pytest

from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import ConnectorConfig, sink_connector_config
from cdc_pipelines.errors import ConnectError
from cdc_pipelines_tests.declarations import all_types_declaration


@pytest.fixture
def sink(connect_url, unique_name):
    config = all_types_declaration(unique_name)
    connector = sink_connector_config(config, config.tables[0])
    client = ConnectClient(connect_url)
    yield client, connector
    client.delete(connector.name)


def with_options(connector: ConnectorConfig, **options: str) -> ConnectorConfig:
    return ConnectorConfig(connector.name, {**connector.config, **options})


def test_validation_names_each_invalid_key_and_applies_nothing(sink):
    client, connector = sink
    broken = with_options(connector, **{"errors.tolerance": "sometimes", "batch.size": "lots"})
    problems = {p.key for p in client.validate(broken.config, broken.name)}
    assert {"errors.tolerance", "batch.size"} <= problems
    with pytest.raises(ConnectError, match=r"errors\.tolerance") as raised:
        client.apply([broken])
    assert "nothing was applied" in str(raised.value)
    assert client.status_if_exists(connector.name) is None


def test_apply_is_idempotent_and_reports_what_changed(sink):
    client, connector = sink
    assert [c.kind for c in client.apply([connector])] == ["create"]
    assert [c.kind for c in client.apply([connector])] == ["unchanged"]
    changed = with_options(connector, **{"batch.size": "777"})
    (change,) = client.apply([changed])
    assert change.kind == "update"
    assert [(k.key, k.current, k.desired) for k in change.keys] == [
        ("batch.size", connector.config["batch.size"], "777")
    ]
    assert client.current_config(connector.name)["batch.size"] == "777"


def test_pause_resume_stop_and_offsets(sink):
    client, connector = sink
    client.apply([connector])
    client.wait_for_state(connector.name, "RUNNING")
    client.pause(connector.name)
    assert client.wait_for_state(connector.name, "PAUSED").state == "PAUSED"
    client.resume(connector.name)
    assert client.wait_for_state(connector.name, "RUNNING").healthy
    client.stop(connector.name)
    deadline_status = client.wait_for_state_connector_only(connector.name, "STOPPED")
    assert deadline_status.state == "STOPPED"
    assert isinstance(client.offsets(connector.name), list)


def test_a_failed_task_carries_its_trace_and_restart_targets_it(sink):
    client, connector = sink
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    broken = with_options(
        connector, **{"connection.url": f"jdbc:postgresql://127.0.0.1:{closed}/cdc"}
    )
    client.apply([broken], validate=False)
    status = client.status_if_exists(connector.name)
    deadline = time.monotonic() + 90
    while (status is None or not status.failed_tasks) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.status_if_exists(connector.name)
    assert status is not None and status.failed_tasks, status
    assert not status.healthy
    trace = status.failed_tasks[0].trace or ""
    assert "Exception" in trace and "JdbcEnvironment" in trace  # Hibernate could not connect
    client.restart(connector.name, only_failed=True, include_tasks=True)
    assert client.status(connector.name).tasks  # still known to the worker after the restart


def test_a_worker_that_is_down_gives_a_clear_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ConnectClient(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01)
    with pytest.raises(ConnectError, match="CDC_CONNECT_URL"):
        client.plugins()
