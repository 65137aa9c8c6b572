"""Dead letters through the real sink: inspect them, fix the cause, replay them, rerun.

The JDBC sink (3.6) fails its task on a PostgreSQL error rather than dead-lettering the
record, so the letters here come from a transform: the sink is first deployed with a
``HashFields`` step naming a column the records do not carry (a mask declared ahead of a
rename), which Connect dead-letters with its ``__connect.errors.*`` headers. The fix is
what an operator does: deploy the declared config (``connectors apply``).
"""

from __future__ import annotations

import json
import time

import pytest

from cdc_pipelines.cli import main
from cdc_pipelines.config import load_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import (
    HASH_FIELDS,
    TOMBSTONE_PREDICATE,
    ConnectorConfig,
    secret_reference,
    sink_connector_config,
)
from cdc_pipelines.kafka.dlq import DlqReader
from cdc_pipelines.kafka.lag_sampler import admin_client
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines_tests.declarations import all_types_yaml
from cdc_pipelines_tests.e2e.tables import both_sides
from cdc_pipelines_tests.e2e.test_streaming_path import pg_rows, row, wait_for

DLQ_TIMEOUT_S = 90
MISSING_COLUMN = "c_renamed"


@pytest.fixture
def table_with_a_sink(
    cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, tmp_path, monkeypatch
):
    monkeypatch.setenv("CDC_KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    path = tmp_path / "pipeline.yaml"
    path.write_text(all_types_yaml(unique_name))
    config = load_config(str(path))
    table = config.tables[0]
    client = ConnectClient(connect_url)
    sink = sink_connector_config(config, table)
    with both_sides(cql_session, postgres_dsn, config, table):
        source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
        try:
            yield str(path), config, table, client, sink, source
        finally:
            client.delete(sink.name)


def hashing_a_missing_column(sink: ConnectorConfig, secrets) -> ConnectorConfig:
    """The sink with one more transform that fails on every row event (not on tombstones)."""
    step = "transforms.hashRenamed"
    return ConnectorConfig(
        sink.name,
        {
            **sink.config,
            "transforms": sink.config["transforms"] + ",hashRenamed",
            f"{step}.type": HASH_FIELDS,
            f"{step}.fields": MISSING_COLUMN,
            f"{step}.salt": secret_reference(secrets, secrets.mask_salt_key),
            f"{step}.predicate": TOMBSTONE_PREDICATE,
            f"{step}.negate": "true",
        },
    )


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def wait_for_depth(bootstrap: str, topic: str, depth: int) -> None:
    reader = DlqReader(bootstrap)
    deadline = time.monotonic() + DLQ_TIMEOUT_S
    found = reader.snapshot([topic]).depth()
    while found < depth and time.monotonic() < deadline:
        time.sleep(1)
        found = reader.snapshot([topic]).depth()
    assert found == depth, f"{topic} holds {found} dead letters, expected {depth}"


def sink_member(bootstrap: str, sink_name: str, other_than: str | None = None) -> str:
    """The member id of the sink's consumer in its group, once it differs from ``other_than``:
    a reconfigured sink restarts its task asynchronously, and a new member is its new task."""
    admin = admin_client(bootstrap, 10.0)
    group = f"connect-{sink_name}"
    deadline = time.monotonic() + DLQ_TIMEOUT_S
    while time.monotonic() < deadline:
        found = admin.describe_consumer_groups([group])[group].result(timeout=10)
        members = [m.member_id for m in found.members]
        if len(members) == 1 and members[0] != other_than:
            return members[0]
        time.sleep(0.5)
    pytest.fail(f"no new consumer of {sink_name} joined {group} in time")


def test_dead_letters_are_inspected_and_replayed_once_the_cause_is_fixed(
    table_with_a_sink, capsys, postgres_dsn, kafka_bootstrap, unique_name
):
    path, config, table, client, sink, source = table_with_a_sink
    name = table.source
    dlq_topic = config.dlq_topic_for(table)

    code, _, err = cli(capsys, "dlq", "inspect", name, "--config", path)
    assert code == 3
    assert dlq_topic in err and kafka_bootstrap in err and "connectors apply" in err

    client.apply([hashing_a_missing_column(sink, config.connectors.secrets)])
    t0 = now_us()
    source.upsert([row(1), row(2), row(3)], t0)
    source.upsert([row(2, c_text="second")], t0 + 100, op="u")
    source.flush()
    wait_for_depth(kafka_bootstrap, dlq_topic, 4)
    assert pg_rows(postgres_dsn, unique_name) == {}
    assert client.status(sink.name).healthy  # errors.tolerance=all: the task keeps running

    code, out, _ = cli(capsys, "dlq", "inspect", name, "--config", path, "--json")
    assert code == 0
    inspected = json.loads(out)
    assert inspected["count"] == 4 and inspected["not_replayed"] == 4
    assert inspected["by_topic"][dlq_topic] == 4
    (reason,) = inspected["reasons"]
    assert reason["count"] == 4
    assert reason["stage"] == "TRANSFORMATION"
    assert reason["class"] == HASH_FIELDS
    assert reason["exception"] == "org.apache.kafka.connect.errors.DataException"
    assert MISSING_COLUMN in reason["message"]
    assert '{"id":1,"region":"eu-west","order":10}' in reason["sample_keys"]
    assert inspected["oldest"] <= inspected["newest"]

    code, out, err = cli(capsys, "dlq", "replay", name, "--config", path, "--json")
    assert code == 0
    dry = json.loads(out)
    assert (dry["applied"], dry["replayed"], dry["count"]) == (False, 0, 4)
    # Row 2's insert is superseded by its update, dead-lettered after it.
    assert (dry["superseded"], dry["unguarded"]) == (1, 0)
    assert "3 dead letter(s) would be replayed" in err and "1 skipped" in err
    assert "dry run" in err

    # The fix: deploy the declared config, and wait for the task it restarts, so the
    # replayed records do not meet the old transforms.
    broken_member = sink_member(kafka_bootstrap, sink.name)
    assert [c.kind for c in client.apply([sink])] == ["update"]
    sink_member(kafka_bootstrap, sink.name, other_than=broken_member)
    source.upsert([row(4)], now_us())
    source.flush()
    # Changes newer than the letters, applied by the fixed sink: row 3 updated, row 1 deleted.
    later = now_us()
    source.upsert([row(3, c_text="newer")], later, op="u")
    first = row(1)
    source.delete([{k: first[k] for k in ("id", "region", "order")}], later + 10)
    source.flush()
    wait_for(
        postgres_dsn,
        unique_name,
        lambda got: set(got) == {3, 4} and got[3]["c_text"] == "newer",
        client,
        sink.name,
    )

    code, out, err = cli(capsys, "dlq", "replay", name, "--config", path, "--apply", "--json")
    assert code == 0, err
    applied = json.loads(out)
    # Only row 2's update is replayed: rows 1 and 3 and row 2's insert have newer changes,
    # which the sink would let the older letters overwrite (row 1 would come back).
    assert (applied["replayed"], applied["superseded"], applied["count"]) == (1, 3, 4)
    assert f"replayed 1 dead letter(s) to {config.topic_for(table)}; 3 skipped" in err
    assert f"reconcile {name} --repair" in err
    landed = wait_for(
        postgres_dsn,
        unique_name,
        lambda got: set(got) == {2, 3, 4} and got[2]["c_text"] == "second",
        client,
        sink.name,
    )
    assert landed[2]["_cdc_version_us"] == t0 + 100
    assert (landed[3]["c_text"], landed[3]["_cdc_version_us"]) == ("newer", later)

    code, out, err = cli(capsys, "dlq", "replay", name, "--config", path, "--apply", "--json")
    assert code == 0, err
    again = json.loads(out)
    assert (again["applied"], again["replayed"], again["count"]) == (True, 0, 0)

    code, out, _ = cli(capsys, "dlq", "inspect", name, "--config", path, "--json")
    after = json.loads(out)
    assert (after["count"], after["not_replayed"], after["failed_again_after_replay"]) == (4, 0, 0)
    wait_for_depth(kafka_bootstrap, dlq_topic, 4)  # nothing replayed was dead-lettered again
