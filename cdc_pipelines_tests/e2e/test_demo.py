"""The README's first command works: the demo runs the pipeline end to end and repairs the drift."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from cdc_pipelines.config import load_config
from cdc_pipelines.defs.names import table_names
from cdc_pipelines.defs.replication_checks import CHECK_DISCREPANCY_RATE, REPLICATION_CHECKS

REPO = Path(__file__).resolve().parents[2]
CHECK_EXECUTIONS = """
query Latest($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) {
    status
    evaluation { success }
  }
}
"""


def test_the_demo_streams_drifts_reconciles_repairs_and_leaves_the_ui_telling_it(
    settings, instance
):
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "demo.orders: 20000 rows written and applied" in log
    assert "missing 5, extra 3, mismatched 4" in log
    assert "repair applied: 9 upserted, 3 deleted" in log
    assert "second reconciliation: 0 discrepancies" in log
    config = load_config(REPO / "pipeline.yaml")
    for names in table_names(config):
        observations = instance.fetch_observations(names.postgres_key, limit=5).records
        assert any(r.timestamp >= started for r in observations), names.source
        for check in REPLICATION_CHECKS:
            key = dg.AssetCheckKey(names.postgres_key, check)
            history = [
                r
                for r in instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
                if r.create_timestamp >= started
            ]
            assert len(history) == 2, f"{names.source} {check}: {history}"  # before and after
            latest = history[0]
            assert latest.status == AssetCheckExecutionRecordStatus.SUCCEEDED, (
                f"{names.source} {check} after the repair: {latest.event}"
            )
    drifted = table_names(config)[0]
    rate = dg.AssetCheckKey(drifted.postgres_key, CHECK_DISCREPANCY_RATE)
    before = instance.event_log_storage.get_asset_check_execution_history(rate, limit=2)[-1]
    assert before.status == AssetCheckExecutionRecordStatus.FAILED
    # Every slice of every table was reconciled as one backfill, listed with its runs.
    backfills = [b for b in instance.get_backfills(limit=20) if b.backfill_timestamp >= started]
    assert len(backfills) >= len(config.tables)
    assert all(b.status == BulkActionStatus.COMPLETED_SUCCESS for b in backfills)

    # What the UI shows: over GraphQL, every declared table's checks have a passing result.
    with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
        for names in table_names(config):
            for check in REPLICATION_CHECKS:
                variables = {"key": {"path": list(names.postgres_key.path)}, "check": check}
                answer = execute_dagster_graphql(context, CHECK_EXECUTIONS, variables)
                assert not answer.errors, answer.errors
                (latest,) = answer.data["assetCheckExecutions"]
                assert latest["status"] == "SUCCEEDED", (names.source, check, latest)
                assert latest["evaluation"]["success"] is True
