"""The code location loads from the example declaration, and its shape is reviewed as a snapshot.

Set ``CDC_UPDATE_SNAPSHOT=1`` to rewrite ``defs_snapshot.json`` after an intended change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from cdc_pipelines.config import load_config
from cdc_pipelines.defs.build import build_definitions, load_definitions
from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.replicated_table import resolve
from cdc_pipelines.ring.slices import MAX_TOKEN, MIN_TOKEN

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "pipeline.yaml"
SNAPSHOT = Path(__file__).with_name("defs_snapshot.json")
VENV_BIN = Path(sys.executable).parent
DG_TIMEOUT_S = 180
BROKEN = """\
version: 1
tables:
  - source: shop.items
    target: shop.items
    partition_key: [idd]
    columns: {id: int, name: text}
"""
EXTRA_TABLE = """
  - source: shop.returns
    target: shop.returns
    partition_key: [id]
    slices: 4
    columns: {id: int, reason: text}
"""


def first_sentence(text: str | None) -> str:
    return (text or "").split(". ", 1)[0]


def shape(defs: dg.Definitions) -> dict[str, object]:
    """What a reviewer should see change: keys, groups, kinds, partitions, checks, jobs, automation."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        keys = [] if partitions is None else list(partitions.get_partition_keys())
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": None if partitions is None else len(keys),
            "first_and_last_partition": keys[:1] + keys[-1:],
            "about": first_sentence(node.description),
            "materializable": node.is_materializable,
        }
    checks = sorted(
        f"{k.asset_key.to_user_string()}:{k.name}{' (blocking)' if graph.get_check_spec(k).blocking else ''}"
        for k in graph.asset_check_keys
    )
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    schedules = {
        s.name: {"cron": s.cron_schedule, "status": s.default_status.value}
        for s in sorted(defs.schedules or [], key=lambda s: s.name)
    }
    sensors = {
        s.name: {"interval_s": s.minimum_interval_seconds, "status": s.default_status.value}
        for s in sorted(defs.sensors or [], key=lambda s: s.name)
    }
    return {
        "assets": assets,
        "checks": checks,
        "jobs": jobs,
        "schedules": schedules,
        "sensors": sensors,
        "resources": sorted(defs.resources or {}),
    }


def test_the_example_declaration_loads_and_matches_the_snapshot():
    defs = load_definitions(EXAMPLE)
    defs.resolve_all_job_defs()
    current = shape(defs)
    if os.environ.get("CDC_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    assert current == recorded, (
        "the definitions changed; review the difference and rerun with CDC_UPDATE_SNAPSHOT=1"
    )


def test_every_table_gets_its_lineage_jobs_and_slices():
    config = load_config(EXAMPLE)
    graph = load_definitions(EXAMPLE).resolve_asset_graph()
    for table in config.tables:
        ks, t = table.keyspace, table.table
        names = TableNames(resolve(config, table.source))
        reconciliation = graph.get(dg.AssetKey([ks, t, f"reconciliation_{t}"]))
        assert reconciliation.partitions_def is not None
        keys = reconciliation.partitions_def.get_partition_keys()
        assert len(keys) == config.slices_for(table)
        assert keys[0] == names.partition_key("00")
        assert keys[0].startswith(f"00: {MIN_TOKEN} < token <= ")
        assert keys[-1].endswith(f" < token <= {MAX_TOKEN}")
        assert [names.slice_id(k) for k in keys] == list(names.slice_ids)
        assert (
            dg.AssetKey([ks, t, f"scylla_{t}"])
            in graph.get(dg.AssetKey([ks, t, f"kafka_{t}"])).parent_keys
        )
        chain = [k for k in graph.get_all_asset_keys() if k.path[:2] == [ks, t]]
        assert len(chain) == 6
        assert {graph.get(k).group_name for k in chain} == {f"{ks}__{t}"}
        assert all(graph.get(k).kinds for k in chain)


def test_adding_a_table_to_the_declaration_adds_its_assets(tmp_path):
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(EXAMPLE.read_text() + EXTRA_TABLE)
    before = set(load_definitions(EXAMPLE).resolve_asset_graph().get_all_asset_keys())
    after_defs = load_definitions(declaration)
    added = {
        k.to_user_string()
        for k in set(after_defs.resolve_asset_graph().get_all_asset_keys()) - before
    }
    assert added == {
        "shop/returns/scylla_returns",
        "shop/returns/kafka_returns",
        "shop/returns/postgres_returns",
        "shop/returns/target_index_returns",
        "shop/returns/reconciliation_returns",
        "shop/returns/repair_returns",
    }
    assert after_defs.resolve_job_def("reconcile__shop__returns").partitions_def is not None


def test_a_broken_declaration_fails_with_its_own_message(tmp_path):
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(BROKEN)
    with pytest.raises(ConfigError) as caught:
        build_definitions(load_config(declaration))
    message = str(caught.value)
    assert "'idd'" in message and "did you mean 'id'" in message
    # The code location itself refuses to load, showing that message.
    result = _dg_check(env={"CDC_PIPELINE_CONFIG": str(declaration)})
    assert result.returncode != 0
    assert "did you mean 'id'" in result.stdout + result.stderr


def test_dg_check_defs_passes_on_the_example():
    result = _dg_check(env={"CDC_PIPELINE_CONFIG": str(EXAMPLE)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def _dg_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env, "VIRTUAL_ENV": str(VENV_BIN.parent)}
    environ["PATH"] = f"{VENV_BIN}{os.pathsep}{environ.get('PATH', '')}"
    return subprocess.run(
        [str(VENV_BIN / "dg"), "check", "defs"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=DG_TIMEOUT_S,
        check=False,
    )


def test_the_nightly_schedule_requests_one_index_run_per_table():
    config = load_config(EXAMPLE)
    defs = load_definitions(EXAMPLE)
    schedule = defs.resolve_schedule_def("nightly_reconciliation")
    night = datetime(2026, 1, 2, 2, 0, tzinfo=UTC)
    with dg.build_schedule_context(scheduled_execution_time=night) as context:
        requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.run_key for r in requests] == [
        f"nightly:{t.source}:2026-01-02" for t in config.tables
    ]
    for request, table in zip(requests, config.tables, strict=True):
        assert request.asset_selection == [
            dg.AssetKey([table.keyspace, table.table, f"target_index_{table.table}"])
        ]
        assert request.tags["cdc/stage"] == "index"
        assert request.tags["cdc/table"] == table.source


def test_repair_is_a_dry_run_unless_the_run_config_says_apply():
    defs = load_definitions(EXAMPLE)
    job = defs.resolve_job_def("repair_slice__demo__orders")
    op = "demo__orders__repair_orders"
    default = {"apply": False, "audit": "keys", "allow_unconfirmed": False}
    assert dg.validate_run_config(job, {})["ops"][op]["config"] == default
    applied = {"ops": {op: {"config": {"apply": True}}}}
    assert dg.validate_run_config(job, applied)["ops"][op]["config"] == {**default, "apply": True}


def test_an_unknown_repair_audit_detail_is_named_with_the_choices():
    from cdc_pipelines.defs.assets import RepairConfig

    assert RepairConfig(audit="exceptions").audit_detail().value == "exceptions"
    with pytest.raises(dg.Failure, match=r"'everything' is not one of 'keys', 'exceptions'"):
        RepairConfig(audit="everything").audit_detail()
