"""The watch sensors against the real Kafka and Kafka Connect of the devstack.

Each test deploys its own small JDBC sink (its own topic, table, group and DLQ), induces
the condition (a paused sink with lag, a task that cannot connect, a poison message),
evaluates the sensor tick by tick and checks its run requests, cursor and observations.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from psycopg import sql

from cdc_pipelines.config import DEFAULT_VAULT_SECRET_PATH, PipelineConfig, load_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import ConnectorConfig
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.jobs import ESCALATION_JOB, escalation_job
from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.defs.restart_policy import RestartPolicy
from cdc_pipelines.defs.sensors import ESCALATION_OP, make_connector_health_sensor
from cdc_pipelines.errors import ConnectError
from cdc_pipelines.kafka.dlq import DlqReader
from cdc_pipelines.kafka.lag import LAG_WINDOW_SIZE
from cdc_pipelines.kafka.lag_sampler import ConsumerTarget, LagSampler
from cdc_pipelines.observability import metrics
from cdc_pipelines.replicated_table import resolve_spec

GOOD_JDBC_URL = "jdbc:postgresql://127.0.0.1:5432/cdc"
CLOSED_PORT_JDBC_URL = "jdbc:postgresql://127.0.0.1:1/cdc"
WAIT_S = 120.0
POLL_S = 0.5
LAGGED_MESSAGES = 20
BACKOFF_S = 2.0


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def declaration(
    tmp_path: Path, unique_name: str, pg_schema: str, settings: object
) -> PipelineConfig:
    """One table with names no other test uses: topic, sink, group, DLQ, PostgreSQL schema."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""\
version: 1
connectors:
  topic_prefix: sensortest
  sink_name_prefix: {unique_name}-sink
  dlq_topic: {unique_name}-dlq
tables:
  - source: {unique_name}.items
    target: {pg_schema}.items
    partition_key: [id]
    columns: {{id: int, label: text}}
    slices: 4
    lag_slo: {{max_messages: 5, max_seconds: 30}}
"""
    )
    with psycopg.connect(os.environ["CDC_POSTGRES_DSN"], autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {}.items (id integer PRIMARY KEY, label text)").format(
                sql.Identifier(pg_schema)
            )
        )
    return load_config(path)


@pytest.fixture
def names(declaration: PipelineConfig) -> TableNames:
    return TableNames(resolve_spec(declaration, declaration.tables[0]))


@pytest.fixture
def defs(declaration: PipelineConfig) -> dg.Definitions:
    return build_definitions(declaration)


@pytest.fixture
def connect(connect_url: str) -> ConnectClient:
    return ConnectClient(connect_url)


@pytest.fixture
def sink(
    connect: ConnectClient, names: TableNames, declaration: PipelineConfig, kafka_bootstrap: str
) -> Iterator[Callable[..., None]]:
    """Deploys the test's JDBC sink (``deploy(url=…, dlq_topic=…)``); removes it and its topics after."""

    def deploy(url: str = GOOD_JDBC_URL, dlq_topic: str | None = None) -> None:
        secrets = DEFAULT_VAULT_SECRET_PATH
        config = {
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "tasks.max": "1",
            "topics": names.topic,
            "connection.url": url,
            "connection.username": f"${{vault:{secrets}:postgres.user}}",
            "connection.password": f"${{vault:{secrets}:postgres.password}}",
            "insert.mode": "upsert",
            "primary.key.mode": "record_key",
            "schema.evolution": "none",
            "collection.name.format": names.spec.target,
            "consumer.override.auto.offset.reset": "earliest",
            "errors.tolerance": "all",
            "errors.deadletterqueue.topic.name": dlq_topic or names.dlq_topic,
            "errors.deadletterqueue.topic.replication.factor": "1",
            "errors.deadletterqueue.context.headers.enable": "true",
        }
        connect.apply([ConnectorConfig(names.sink, config)], validate=False)

    yield deploy
    connect.delete(names.sink)
    topics = [names.topic, names.dlq_topic, declaration.connectors.dlq_topic]
    AdminClient({"bootstrap.servers": kafka_bootstrap}).delete_topics(topics, operation_timeout=10)


@pytest.fixture
def pushed(
    pushgateway_url: str, names: TableNames, declaration: PipelineConfig
) -> Iterator[Callable[..., float | None]]:
    """``pushed(metric, **labels)``: the value the Pushgateway holds; the test's groups go after."""
    from prometheus_client.parser import text_string_to_metric_families

    def value(metric: metrics.Metric, **labels: str) -> float | None:
        text = requests.get(f"{pushgateway_url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == metric.name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    yield value
    for group in (
        f"{metrics.LAG_JOB}/table/{names.source}",
        f"{metrics.DLQ_JOB}/table/{names.source}/dlq_topic/{names.dlq_topic}",
        f"{metrics.DLQ_JOB}/table@base64/=/dlq_topic/{declaration.connectors.dlq_topic}",
        f"{metrics.CONNECTOR_JOB}/connector/{names.sink}",
    ):
        requests.delete(f"{pushgateway_url}/metrics/job/{group}", timeout=10)


# --- helpers --------------------------------------------------------------------------


def _record(fields: list[dict[str, object]], payload: dict[str, object]) -> bytes:
    return json.dumps(
        {"schema": {"type": "struct", "optional": False, "fields": fields}, "payload": payload}
    ).encode()


def produce(bootstrap: str, topic: str, ids: range, poison: bool = False) -> None:
    """Rows ``ids`` as the JsonConverter expects them; ``poison`` sends a value it cannot parse."""
    producer = Producer({"bootstrap.servers": bootstrap})
    id_field = {"field": "id", "type": "int32", "optional": False}
    label_field = {"field": "label", "type": "string", "optional": True}
    for i in ids:
        key = _record([id_field], {"id": i})
        value = (
            b'{"schema": {"type": "struct"'
            if poison
            else _record([id_field, label_field], {"id": i, "label": f"row {i}"})
        )
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def task_failed(connect: ConnectClient, name: str) -> bool:
    """Whether a task of ``name`` is FAILED; a connector Connect has not registered yet is not."""
    try:
        return bool(connect.status(name).failed_tasks)
    except ConnectError:
        return False


def lag_of(bootstrap: str, names: TableNames) -> tuple[int | None, int]:
    """(members, total lag) of the sink's group, read the way the sensor reads it."""
    sample = LagSampler(bootstrap).sample([ConsumerTarget(names.consumer_group, names.topic)])[0]
    return sample.tick.members, sum(p.lag for p in sample.tick.partitions.values())


def tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    sensor: dg.SensorDefinition,
    cursor: str | None,
) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        sensor_name=sensor.name,
        resources=defs.resources,
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def observation(result: dg.SensorResult, key: dg.AssetKey) -> dict[str, object]:
    found = [
        e
        for e in result.asset_events or []
        if isinstance(e, dg.AssetObservation) and e.asset_key == key
    ]
    assert len(found) == 1, f"expected one observation of {key.to_user_string()}, got {len(found)}"
    return {k: v.value for k, v in found[0].metadata.items()}


# --- consumer lag ---------------------------------------------------------------------


def test_lag_sensor_reports_a_stall_and_reconciles_after_recovery(
    defs, instance, names, sink, connect, kafka_bootstrap, pushed
):
    produce(kafka_bootstrap, names.topic, range(3))
    sink()
    wait_until(
        lambda: lag_of(kafka_bootstrap, names) == (1, 0), "the sink to consume the first rows"
    )
    sensor = defs.resolve_sensor_def("consumer_lag")

    first = tick(defs, instance, sensor, None)
    assert first.run_requests == []
    seen = observation(first, names.postgres_key)
    assert (seen["lag_status"], seen["lag_messages"], seen["consumer_members"]) == ("OK", 0, 1)

    connect.pause(names.sink)
    connect.wait_for_state(names.sink, "PAUSED")
    produce(kafka_bootstrap, names.topic, range(3, 3 + LAGGED_MESSAGES))
    cursor = first.cursor
    # The caught-up first tick keeps the table OK until it leaves the window (Burrow's rule 3).
    for _ in range(LAG_WINDOW_SIZE):
        time.sleep(0.05)
        result = tick(defs, instance, sensor, cursor)
        assert result.run_requests == []
        cursor = result.cursor
    seen = observation(result, names.postgres_key)
    assert seen["lag_status"] == "STALL"
    assert seen["lag_messages"] == LAGGED_MESSAGES
    assert seen["within_lag_slo"] is False
    assert isinstance(seen["lag_seconds"], float) and seen["lag_seconds"] > 0
    state = json.loads(cursor or "")["tables"][names.source]
    assert state["s"] == "STALL"
    assert len(state["w"]) == LAG_WINDOW_SIZE
    incident_started = state["i"]
    assert isinstance(incident_started, int)
    # What the alerting rules compare: the lag, the table's lag_slo and its CDC log's TTL.
    table = {"table": names.source, "consumer_group": names.consumer_group}
    assert pushed(metrics.CONSUMER_LAG_MESSAGES, **table) == LAGGED_MESSAGES
    assert pushed(metrics.CONSUMER_LAG_STATUS, **table) == 3  # STALL
    assert (pushed(metrics.CONSUMER_LAG_SECONDS, **table) or 0) > 0
    assert pushed(metrics.LAG_SLO_MESSAGES, **table) == 5
    assert pushed(metrics.LAG_SLO_SECONDS, **table) == 30
    assert pushed(metrics.CDC_LOG_TTL_SECONDS, **table) == 86_400

    connect.resume(names.sink)
    wait_until(lambda: lag_of(kafka_bootstrap, names) == (1, 0), "the resumed sink to catch up")
    recovered = tick(defs, instance, sensor, cursor)
    assert len(recovered.run_requests) == 1
    request = recovered.run_requests[0]
    assert request.job_name == names.reconcile_job
    assert request.run_key == f"lag-recovered:{names.source}:STALL:{incident_started}"
    assert request.asset_selection == [names.target_index_key]
    assert request.tags["cdc/table"] == names.source
    assert request.tags["cdc/reason"] == "lag-recovered"
    assert request.tags["cdc/stage"] == "index"
    assert request.tags["cdc/trigger"].startswith("STALL since ")
    state = json.loads(recovered.cursor or "")["tables"][names.source]
    assert (state["s"], state["i"]) == ("OK", None)

    assert tick(defs, instance, sensor, recovered.cursor).run_requests == []


# --- connector health -----------------------------------------------------------------


def test_health_sensor_restarts_with_backoff_then_escalates(
    defs, instance, names, sink, connect, kafka_bootstrap, pushed
):
    sink(url=CLOSED_PORT_JDBC_URL)
    wait_until(lambda: task_failed(connect, names.sink), "the sink task to fail")
    policy = RestartPolicy(budget=2, base_backoff_s=BACKOFF_S, max_backoff_s=BACKOFF_S)
    sensor = make_connector_health_sensor([names], None, escalation_job(), policy)
    key = f"{names.sink}#0"

    cursor = None
    for attempt in (1, 2):
        result = tick(defs, instance, sensor, cursor)
        assert result.run_requests == []
        failures = json.loads(result.cursor or "")["failures"]
        first_failed, attempts, next_attempt, escalated = failures[key]
        assert (attempts, escalated) == (attempt, False)
        assert next_attempt - int(time.time() * 1000) <= BACKOFF_S * 1000
        assert observation(result, names.postgres_key)["connector"] == names.sink
        task = {"connector": names.sink, "table": names.source}
        assert pushed(metrics.CONNECTOR_TASK_FAILED, **task, task="0") == 1
        assert pushed(metrics.CONNECTOR_TASK_FAILED, **task, task="connector") == 0
        cursor = result.cursor
        # Restarting does not fix a closed port: the task fails again after the backoff.
        time.sleep(BACKOFF_S + 0.5)
        wait_until(lambda: task_failed(connect, names.sink), "the restarted task to fail again")

    escalation = tick(defs, instance, sensor, cursor)
    assert len(escalation.run_requests) == 1
    request = escalation.run_requests[0]
    assert request.run_key == f"connector-escalation:{names.sink}:0:{first_failed}"
    assert request.tags["cdc/reason"] == "connector-failed"
    assert request.tags["cdc/table"] == names.source
    op_config = request.run_config["ops"][ESCALATION_OP]["config"]
    assert op_config["connector"] == names.sink
    assert op_config["attempts"] == 2
    assert "JdbcEnvironment" in op_config["trace"] or "Connection" in op_config["trace"]
    assert json.loads(escalation.cursor or "")["failures"][key][3] is True

    # Escalated: no more restarts and no second escalation while it stays failed.
    later = tick(defs, instance, sensor, escalation.cursor)
    assert later.run_requests == []
    assert (
        json.loads(later.cursor or "")["failures"][key]
        == json.loads(escalation.cursor or "")["failures"][key]
    )

    # The escalation run fails and carries the task's trace for the human it pages.
    job = dg.Definitions(jobs=[escalation_job()], resources=defs.resources).resolve_job_def(
        ESCALATION_JOB
    )
    run = job.execute_in_process(run_config=request.run_config, raise_on_error=False)
    assert not run.success
    failure = run.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure is not None and names.sink in (failure.description or "")
    assert "trace" in failure.metadata

    # Fixed: the task runs again and the sensor forgets the failure.
    sink(url=GOOD_JDBC_URL)
    connect.restart(names.sink)
    connect.wait_for_state(names.sink, "RUNNING")
    fixed = tick(defs, instance, sensor, later.cursor)
    assert json.loads(fixed.cursor or "")["failures"] == {}
    assert observation(fixed, names.postgres_key)["connector_state"] == "RUNNING"
    assert pushed(metrics.CONNECTOR_TASK_FAILED, connector=names.sink, task="0") == 0
    assert pushed(metrics.CONNECTOR_TASKS_RUNNING, connector=names.sink) == 1


# --- dead letters -----------------------------------------------------------------------


def test_dlq_sensor_reconciles_the_table_a_poison_message_came_from(
    defs, instance, names, sink, declaration, kafka_bootstrap, pushed
):
    shared_dlq = declaration.connectors.dlq_topic
    produce(kafka_bootstrap, names.topic, range(2))
    # The shared DLQ topic: only the record's headers can tell which table it came from.
    sink(dlq_topic=shared_dlq)
    wait_until(
        lambda: lag_of(kafka_bootstrap, names) == (1, 0), "the sink to consume the first rows"
    )
    sensor = defs.resolve_sensor_def("dead_letter_queue")

    baseline = tick(defs, instance, sensor, None)
    assert baseline.run_requests == []
    # The shared topic has no letters yet: 0, so that the first one shows as growth.
    assert pushed(metrics.DLQ_END_OFFSET, dlq_topic=shared_dlq) == 0
    assert pushed(metrics.DLQ_DEPTH, table=names.source, dlq_topic=names.dlq_topic) == 0

    produce(kafka_bootstrap, names.topic, range(100, 101), poison=True)
    reader = DlqReader(kafka_bootstrap)
    wait_until(lambda: reader.snapshot([shared_dlq]).depth() == 1, "the poison message in the DLQ")

    grown = tick(defs, instance, sensor, baseline.cursor)
    assert len(grown.run_requests) == 1
    request = grown.run_requests[0]
    assert request.job_name == names.reconcile_job
    assert request.run_key == f"dlq-growth:{names.source}:{shared_dlq}/0@0-0"
    assert request.asset_selection == [names.target_index_key]
    assert request.tags["cdc/reason"] == "dlq-growth"
    assert request.tags["cdc/table"] == names.source
    assert json.loads(grown.cursor or "")["seen"] == {f"{shared_dlq}|0": 1}
    seen = observation(grown, names.kafka_key)
    assert seen["dlq_new_messages"] == 1
    assert pushed(metrics.DLQ_END_OFFSET, dlq_topic=shared_dlq) == 1
    assert pushed(metrics.DLQ_DEPTH, dlq_topic=shared_dlq) == 1
    assert "DataException" in str(seen["last_error"]) or "JSON" in str(seen["last_error"])

    assert tick(defs, instance, sensor, grown.cursor).run_requests == []


# --- a hundred tables -------------------------------------------------------------------


MANY_TABLES = 100
TICK_LIMIT_S = 30.0
"""Dagster kills a tick at 60 s; every sensor must stay well below with 100 tables."""


def test_every_tick_stays_well_under_a_minute_with_a_hundred_tables(
    tmp_path, unique_name, instance, kafka_bootstrap, connect_url, settings
):
    from confluent_kafka.admin import NewTopic

    tables = "\n".join(
        f"""  - source: {unique_name}.t{i:03d}
    target: {unique_name}.t{i:03d}
    partition_key: [id]
    columns: {{id: int}}"""
        for i in range(MANY_TABLES)
    )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"version: 1\nconnectors:\n  sink_name_prefix: {unique_name}\ntables:\n{tables}\n"
    )
    config = load_config(path)
    defs = build_definitions(config)
    topics = [config.topic_for(t) for t in config.tables]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(t, num_partitions=3) for t in topics]).values():
        future.result(timeout=60)
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for topic in topics:
            for partition in range(3):
                producer.produce(topic, value=b"{}", partition=partition)
        assert producer.flush(30) == 0
        for name in ("consumer_lag", "connector_health", "dead_letter_queue"):
            sensor = defs.resolve_sensor_def(name)
            cursor = None
            for _ in range(2):
                started = time.monotonic()
                result = tick(defs, instance, sensor, cursor)
                elapsed = time.monotonic() - started
                assert elapsed < TICK_LIMIT_S, (
                    f"{name} took {elapsed:.1f}s for {MANY_TABLES} tables"
                )
                cursor = result.cursor
        # No sink consumes these topics: every table has lag and no consumer.
        states = json.loads(cursor_of(defs, instance, "consumer_lag"))["tables"]
        assert len(states) == MANY_TABLES
        assert {state["s"] for state in states.values()} == {"STOP"}
    finally:
        admin.delete_topics(topics, operation_timeout=30)
        for table in config.tables:  # the groups the sensors pushed, one per job and table
            group = f"{settings.pushgateway_url}/metrics/job/{{}}/table/{table.source}"
            requests.delete(group.format(metrics.LAG_JOB), timeout=10)
            dlq = f"/dlq_topic/{TableNames(resolve_spec(config, table)).dlq_topic}"
            requests.delete(group.format(metrics.DLQ_JOB) + dlq, timeout=10)


def cursor_of(defs: dg.Definitions, instance: dg.DagsterInstance, name: str) -> str:
    return tick(defs, instance, defs.resolve_sensor_def(name), None).cursor or ""


# --- slices after the index -------------------------------------------------------------


def test_a_successful_index_run_fans_out_one_run_per_slice(defs, instance, names):
    @dg.op
    def stand_in() -> None:
        """Stands for the target-index step; only the run's tags and status matter here."""

    @dg.job(name="index_stand_in")
    def index_stand_in() -> None:
        stand_in()

    tags = names.run_tags("dlq-growth", "index", "test")
    run = index_stand_in.execute_in_process(instance=instance, tags=tags)
    success = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS
    ).records
    assert len(success) == 1
    event = success[0].event_log_entry.dagster_event
    assert event is not None
    sensor = defs.resolve_sensor_def("reconcile_slices_after_index")
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=run.dagster_run,
    )
    requests = sensor(context)
    assert isinstance(requests, list)
    # One run per slice, its partition named by the slice id and token range.
    assert [r.partition_key for r in requests] == list(names.slices)
    assert [names.slice_id(r.partition_key) for r in requests] == ["00", "01", "02", "03"]
    assert {r.job_name for r in requests} == {names.reconcile_job}
    assert all(r.asset_selection == [names.reconciliation_key] for r in requests)
    assert [r.run_key for r in requests] == [f"{run.run_id}:{s}" for s in ("00", "01", "02", "03")]
    assert all(
        r.tags["cdc/stage"] == "slice" and r.tags["cdc/reason"] == "dlq-growth" for r in requests
    )
    assert all(r.tags["cdc/index-run"] == run.run_id for r in requests)
