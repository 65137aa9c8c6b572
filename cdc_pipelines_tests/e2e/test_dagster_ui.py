"""The code location served by a real ``dagster dev``: assets over GraphQL, runs, the UI.

``dagster dev`` (webserver + daemon) runs in its own session on a free port with a
temporary DAGSTER_HOME copied from ``dagster_home/`` and a PostgreSQL database of this
test's own (next to the suite's ``dagster_test``), so the daemon sees only this test's runs;
the whole process group is killed at the end. A reconciliation is launched the way the
sensors launch it (the target-index run) and the daemon's fan-out sensor must turn it into
one successful run per token slice, whose checks show which slice disagrees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cdc_pipelines.config import load_config
from cdc_pipelines.defs.names import table_names
from cdc_pipelines_tests.conftest import DagsterStorage
from cdc_pipelines_tests.e2e.conftest import ITEMS_MISSING_ID, items_partition_of
from cdc_pipelines_tests.tooling.ui_screenshots import (
    ScreenshotError,
    Webserver,
    free_port,
    stop,
    wait_until_loaded,
)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
START_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 300.0
GRAPHQL_TIMEOUT_S = 30.0
POLL_S = 1.0
CHROMIUM_TIMEOUT_S = 120
JOB = "replication_checks"
CODE_LOCATION = "cdc_pipelines"
REPOSITORY = "__repository__"
DONE_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class DagsterUi:
    url: str
    log: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables or {}},
            timeout=GRAPHQL_TIMEOUT_S,
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]


@pytest.fixture
def dagster_database(dagster_storage: DagsterStorage, unique_name: str) -> Iterator[str]:
    """A database of this test's own on the tests' Dagster server (its daemon runs sensors)."""
    dagster_storage.create_database(unique_name)
    yield dagster_storage.database_url(unique_name)
    dagster_storage.drop_database(unique_name)


@pytest.fixture
def dagster_ui(
    tmp_path: Path, items_declaration: Path, dagster_database: str, kafka_bootstrap: str
) -> Iterator[DagsterUi]:
    # The table's dead-letter topic exists before the daemon's first look at it.
    (names,) = table_names(load_config(items_declaration))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(names.dlq_topic, 1, 1)]).values():
        future.result(timeout=30)
    home = tmp_path / "dagster_home"
    shutil.copytree(REPO / "dagster_home", home)
    with (home / "dagster.yaml").open("a") as instance_yaml:
        # No "join the community" dialog over the page the screenshot is taken of.
        instance_yaml.write("\nnux:\n  enabled: false\n")
    port = free_port()
    log = tmp_path / "dagster-dev.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_URL": dagster_database,
        "CDC_PIPELINE_CONFIG": str(items_declaration),
        "CDC_SCRATCH_URI": str(tmp_path / "scratch"),
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ui = DagsterUi(f"http://127.0.0.1:{port}", log)
    try:
        try:
            wait_until_loaded(Webserver(ui.url, ui.log), process)
        except ScreenshotError as exc:  # the tooling's word for "the UI did not come up"
            pytest.fail(str(exc))
        yield ui
    finally:
        stop(process)


ASSET_KEYS = "{ assetsOrError { ... on AssetConnection { nodes { key { path } } } } }"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}
"""
RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
  }
}
"""
CHECKS = """
query Checks($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events { __typename ... on AssetCheckEvaluationEvent { evaluation { checkName success } } }
    }
  }
}
"""
RUNS_TAGGED = """
query Runs($key: String!, $value: String!) {
  runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
MATERIALIZED_PARTITIONS = """
query Partitions($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations { partition metadataEntries { label ... on IntMetadataEntry { intValue } } } }
  }
}
"""
PARTITION_CHECKS = """
query PartitionChecks($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode {
      partitionKeysByDimension { partitionKeys }
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
}
"""


LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status runs(limit: 100) { runId status } }
  }
}
"""
SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 5) { status } } }
  }
}
"""
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
DLQ_SENSOR = "dead_letter_queue"


def launch_backfill(ui: DagsterUi, asset: list[str], partitions: list[str]) -> str:
    """A backfill of ``partitions`` of ``asset``, launched as the UI's "Materialize" dialog does."""
    params = {
        "assetSelection": [{"path": asset}],
        "partitionNames": partitions,
        "fromFailure": False,
        "tags": [{"key": "cdc/trigger", "value": "e2e backfill"}],
    }
    launched = ui.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return str(launched["backfillId"])


def wait_for_backfill(ui: DagsterUi, backfill_id: str) -> dict[str, Any]:
    """The backfill once the daemon finished it."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    backfill: dict[str, Any] = {}
    while time.monotonic() < deadline:
        backfill = ui.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill.get("status") in BACKFILL_DONE:
            return backfill
        time.sleep(POLL_S)
    pytest.fail(
        f"backfill {backfill_id} after {RUN_TIMEOUT_S:.0f}s: {backfill}\n{ui.log.read_text()[-4000:]}"
    )


def wait_for_sensor_tick(ui: DagsterUi, sensor: str) -> None:
    """Until the daemon evaluated ``sensor`` once (its first tick records the baseline)."""
    selector = {
        "repositoryLocationName": CODE_LOCATION,
        "repositoryName": REPOSITORY,
        "sensorName": sensor,
    }
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        found = ui.graphql(SENSOR_TICKS, {"selector": selector})["sensorOrError"]
        ticks = (found.get("sensorState") or {}).get("ticks") or []
        if any(t["status"] in {"SUCCESS", "SKIPPED"} for t in ticks):
            return
        assert not any(t["status"] == "FAILURE" for t in ticks), ui.log.read_text()[-4000:]
        time.sleep(POLL_S)
    pytest.fail(f"the daemon did not tick {sensor} in {START_TIMEOUT_S:.0f}s")


def wait_for_tagged_runs(ui: DagsterUi, key: str, value: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + RUN_TIMEOUT_S + 120
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = ui.graphql(RUNS_TAGGED, {"key": key, "value": value})["runsOrError"]["results"]
        if len(runs) >= count and all(r["status"] in DONE_STATUSES for r in runs):
            return runs
        time.sleep(POLL_S)
    pytest.fail(f"runs tagged {key}={value}: {runs}\n{ui.log.read_text()[-4000:]}")


def dead_letter(bootstrap: str, dlq_topic: str, source_topic: str) -> None:
    """One record in the table's dead-letter topic, with the header the sink's DLQ writes."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        dlq_topic,
        key=b'{"id": 3}',
        value=b"not json",
        headers=[("__connect.errors.topic", source_topic.encode())],
    )
    assert producer.flush(30) == 0


def launch(
    ui: DagsterUi,
    job: str,
    assets: list[list[str]] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    selector: dict[str, Any] = {
        "repositoryLocationName": CODE_LOCATION,
        "repositoryName": REPOSITORY,
        "jobName": job,
    }
    if assets is not None:
        selector["assetSelection"] = [{"path": path} for path in assets]
    params = {
        "selector": selector,
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]},
    }
    launched = ui.graphql(LAUNCH, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return str(launched["run"]["runId"])


def wait_for_run(ui: DagsterUi, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        status = ui.graphql(RUN, {"runId": run_id})["runOrError"]["status"]
        if status in DONE_STATUSES:
            break
        time.sleep(POLL_S)
    assert status == "SUCCESS", f"run {run_id} ended {status}:\n{ui.log.read_text()[-4000:]}"


def wait_for_slice_runs(ui: DagsterUi, index_run: str, slice_count: int) -> list[dict[str, Any]]:
    """The runs the fan-out sensor requested for ``index_run``, once all of them finished."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = ui.graphql(RUNS_TAGGED, {"key": "cdc/index-run", "value": index_run})["runsOrError"][
            "results"
        ]
        if len(runs) == slice_count and all(r["status"] in DONE_STATUSES for r in runs):
            return runs
        time.sleep(POLL_S)
    pytest.fail(
        f"slice runs of {index_run} after {RUN_TIMEOUT_S:.0f}s: {runs}\n{ui.log.read_text()[-4000:]}"
    )


def chromium(*arguments: str, profile: Path) -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; 'bash .ci/setup' installs Debian's chromium")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
        "--virtual-time-budget=15000",
        *arguments,
    ]
    return subprocess.run(
        command, check=True, timeout=CHROMIUM_TIMEOUT_S, capture_output=True, text=True
    ).stdout


def test_dagster_dev_serves_the_assets_runs_jobs_and_draws_the_graph(
    dagster_ui, items_declaration, keyspace, pg_schema, tmp_path, cql_session, kafka_bootstrap
):
    (names,) = table_names(load_config(items_declaration))
    disagreeing = items_partition_of(cql_session, names, ITEMS_MISSING_ID)
    # The dead-letter sensor's first tick records the queue's depth; a letter after it is new.
    wait_for_sensor_tick(dagster_ui, DLQ_SENSOR)
    dead_letter(kafka_bootstrap, names.dlq_topic, names.topic)
    paths = {
        "/".join(node["key"]["path"])
        for node in dagster_ui.graphql(ASSET_KEYS)["assetsOrError"]["nodes"]
    }
    # One folder per table, each node named by its system and table.
    expected = {
        f"{keyspace}/items/scylla_items",
        f"{keyspace}/items/kafka_items",
        f"{keyspace}/items/postgres_items",
        f"{keyspace}/items/target_index_items",
        f"{keyspace}/items/reconciliation_items",
        f"{keyspace}/items/repair_items",
    }
    assert expected <= paths, paths

    # The hourly checks, launched by hand: the run succeeds and parity sees the missing row.
    checks_run = launch(dagster_ui, JOB)
    wait_for_run(dagster_ui, checks_run)
    events = dagster_ui.graphql(CHECKS, {"runId": checks_run})["logsForRun"]["events"]
    checks = {
        e["evaluation"]["checkName"]: e["evaluation"]["success"]
        for e in events
        if e["__typename"] == "AssetCheckEvaluationEvent"
    }
    assert set(checks) == {"lag_within_slo", "freshness", "row_count_parity", "discrepancy_rate"}
    assert checks["row_count_parity"] is False

    # A reconciliation as the sensors request it: the index run, then one run per slice.
    source = f"{keyspace}.items"
    index_run = launch(
        dagster_ui,
        f"reconcile__{keyspace}__items",
        assets=[[keyspace, "items", "target_index_items"]],
        tags={
            "cdc/table": source,
            "cdc/stage": "index",
            "cdc/reason": "manual",
            "cdc/trigger": "e2e",
        },
    )
    wait_for_run(dagster_ui, index_run)
    slice_runs = wait_for_slice_runs(dagster_ui, index_run, names.slice_count)
    assert {r["status"] for r in slice_runs} == {"SUCCESS"}, slice_runs
    for run in slice_runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert (tags["cdc/table"], tags["cdc/stage"], tags["cdc/reason"]) == (
            source,
            "slice",
            "manual",
        )
    reconciliation = [keyspace, "items", "reconciliation_items"]
    materializations = dagster_ui.graphql(MATERIALIZED_PARTITIONS, {"path": reconciliation})[
        "assetOrError"
    ]["assetMaterializations"]
    assert sorted(m["partition"] for m in materializations) == sorted(names.slices)
    missing = {
        m["partition"]: e["intValue"]
        for m in materializations
        for e in m["metadataEntries"]
        if e["label"] == "missing"
    }
    assert missing == {key: int(key == disagreeing) for key in names.slices}

    # The partitions name their token ranges, and the slice check shows which one disagrees.
    node = dagster_ui.graphql(PARTITION_CHECKS, {"path": reconciliation})["assetNodeOrError"]
    (dimension,) = node["partitionKeysByDimension"]
    assert dimension["partitionKeys"] == list(names.slices)
    assert all(" < token <= " in key for key in dimension["partitionKeys"])
    (check,) = node["assetChecksOrError"]["checks"]
    assert check["name"] == "slice_in_sync"
    statuses = check["partitionStatuses"]
    assert statuses["failedPartitions"] == [disagreeing]
    assert sorted(statuses["succeededPartitions"]) == sorted(set(names.slices) - {disagreeing})

    # A backfill of every partition, launched as the UI launches it and run by the daemon.
    backfill_id = launch_backfill(dagster_ui, reconciliation, list(names.slices))
    backfill = wait_for_backfill(dagster_ui, backfill_id)
    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, backfill
    assert len(backfill["runs"]) == names.slice_count
    assert {r["status"] for r in backfill["runs"]} == {"SUCCESS"}, backfill
    materializations = dagster_ui.graphql(MATERIALIZED_PARTITIONS, {"path": reconciliation})[
        "assetOrError"
    ]["assetMaterializations"]
    by_partition: dict[str, list[int]] = {}
    for m in materializations:
        for e in m["metadataEntries"]:
            if e["label"] == "missing":
                by_partition.setdefault(m["partition"], []).append(e["intValue"])
    # Each slice now has the sensor's and the backfill's result, and both agree.
    assert all(len(v) >= 2 for v in by_partition.values()), by_partition
    assert {p: set(v) for p, v in by_partition.items()} == {
        key: {int(key == disagreeing)} for key in names.slices
    }

    # The dead letter sent at the start: the daemon's sensor requested a reconciliation,
    # whose index run fanned out into one run per slice, and all of them finished.
    dlq_runs = wait_for_tagged_runs(
        dagster_ui, "cdc/reason", "dlq-growth", count=1 + names.slice_count
    )
    assert {r["status"] for r in dlq_runs} == {"SUCCESS"}, dlq_runs
    stages = sorted({t["value"] for r in dlq_runs for t in r["tags"] if t["key"] == "cdc/stage"})
    assert stages == ["index", "slice"]

    profile = tmp_path / "chromium-profile"
    graph_url = f"{dagster_ui.url}/asset-groups/{names.group}"
    screenshot = tmp_path / "asset-graph.png"
    chromium(f"--screenshot={screenshot}", graph_url, profile=profile)
    assert screenshot.stat().st_size > 10_000
    dom = chromium("--dump-dom", graph_url, profile=profile)
    catalog = chromium("--dump-dom", f"{dagster_ui.url}/assets", profile=profile)
    artifacts = os.environ.get("CDC_E2E_ARTIFACTS")
    if artifacts:
        shutil.copy(screenshot, Path(artifacts) / "asset-graph.png")
        (Path(artifacts) / "asset-graph.html").write_text(dom)
    # The lineage graph of the table's group labels each node with its system and table.
    for label in (path.rsplit("/", 1)[1] for path in expected):
        assert f">{label}<" in dom, f"the lineage graph has no node labelled {label}"
    # The catalog lists every asset by its full key.
    for path in expected:
        assert " / ".join(path.split("/")) in catalog, f"the asset catalog does not list {path}"
