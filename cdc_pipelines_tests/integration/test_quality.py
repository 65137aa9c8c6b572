"""Data-quality and parity checks on the real PostgreSQL and CQL endpoint.

Target expectations run server-side through Great Expectations' SQL datasource;
source expectations run on a LIMITed sample and, when they fail, block repair.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.config import PipelineConfig, load_config
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.quality.counts import source_row_count, target_row_count
from cdc_pipelines.quality.expectations import declared_expectations
from cdc_pipelines.quality.sample import sample_source_rows
from cdc_pipelines.quality.validate import validate_postgres_table
from cdc_pipelines.replicated_table import resolve_spec

ROWS = 50


@pytest.fixture
def declaration(
    tmp_path: Path, keyspace: str, pg_schema: str, cql_session, postgres_dsn: str
) -> PipelineConfig:
    """``items`` on both sides with the same ROWS rows; reserved and mixed-case column names."""
    cql_session.execute(
        f'CREATE TABLE {keyspace}.items (id int PRIMARY KEY, "Label" text, "order" int)'
    )
    insert = cql_session.prepare(
        f'INSERT INTO {keyspace}.items (id, "Label", "order") VALUES (?, ?, ?)'
    )
    for i in range(ROWS):
        cql_session.execute(insert, (i, f"item-{i}", i))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        table = sql.Identifier(pg_schema, "items")
        conn.execute(
            sql.SQL(
                'CREATE TABLE {} (id integer PRIMARY KEY, "Label" text, "order" integer)'
            ).format(table)
        )
        conn.execute(
            sql.SQL("INSERT INTO {} SELECT i, {} || i, i FROM generate_series(0, %s) i").format(
                table, sql.Literal("item-")
            ),
            (ROWS - 1,),
        )
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""\
version: 1
tables:
  - source: {keyspace}.items
    target: {pg_schema}.items
    partition_key: [id]
    slices: 2
    columns: {{id: int, Label: text, order: int}}
    expectations:
      - {{kind: not_null, column: Label}}
      - {{kind: between, column: order, min: 0, max: 40}}
      - {{kind: matches_regex, column: Label, regex: '^item-[0-9]+$'}}
      - {{kind: unique, column: order}}
      - {{kind: in_set, column: id, values: [0, 1, 2]}}
      - {{kind: row_count_between, min: 1, max: 1000}}
      - {{kind: not_null, column: Label, side: source}}
      - {{kind: row_count_between, min: {ROWS}, max: {ROWS}, side: source}}
"""
    )
    return load_config(path)


@pytest.fixture
def names(declaration: PipelineConfig) -> TableNames:
    return TableNames(resolve_spec(declaration, declaration.tables[0]))


def evaluations(
    result: dg.ExecuteInProcessResult, key: dg.AssetKey
) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == key}


def test_target_expectations_run_on_postgres_with_quoted_names(names, postgres_dsn):
    declared = declared_expectations(names.spec, "target")
    outcomes = {
        o.name: o
        for o in validate_postgres_table(postgres_dsn, names.spec.target_schema, "items", declared)
    }
    assert set(outcomes) == {d.name for d in declared}
    assert outcomes["expect_not_null_label"].success
    between = outcomes["expect_between_order"]
    assert not between.success
    assert between.unexpected_count == ROWS - 41
    assert between.element_count == ROWS
    assert outcomes["expect_matches_regex_label"].success
    assert outcomes["expect_unique_order"].success
    in_set = outcomes["expect_in_set_id"]
    assert (in_set.success, in_set.unexpected_count) == (False, ROWS - 3)
    assert outcomes["expect_row_count_between"].success
    assert outcomes["expect_row_count_between"].observed_value == str(ROWS)
    assert all("server-side" in o.evaluated_on for o in outcomes.values())


def test_data_quality_job_reports_one_check_per_expectation(names, declaration, instance):
    defs = build_definitions(declaration)
    result = defs.resolve_job_def("data_quality").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert result.success
    target = evaluations(result, names.postgres_key)
    assert {name: e.passed for name, e in target.items()} == {
        "expect_not_null_label": True,
        "expect_between_order": False,
        "expect_matches_regex_label": True,
        "expect_unique_order": True,
        "expect_in_set_id": False,
        "expect_row_count_between": True,
    }
    assert target["expect_between_order"].metadata["unexpected_rows"].value == ROWS - 41
    source = evaluations(result, names.scylla_key)
    assert {name: e.passed for name, e in source.items()} == {
        "expect_not_null_label": True,
        "expect_row_count_between": True,
    }
    assert "sample" in str(source["expect_not_null_label"].metadata["evaluated_on"].value)


def test_a_failing_source_check_blocks_repair(names, declaration, instance, cql_session):
    cql_session.execute(
        f'INSERT INTO {names.spec.keyspace}.items (id, "Label", "order") VALUES (999, null, 1)'
    )
    defs = build_definitions(declaration)
    repair = defs.resolve_job_def(names.repair_job)
    repair_op = defs.get_assets_def(names.repair_key).node_def.name
    first_slice = names.slices[0]

    blocked = repair.execute_in_process(
        instance=instance, partition_key=first_slice, raise_on_error=False
    )
    source = evaluations(blocked, names.scylla_key)
    assert source["expect_not_null_label"].passed is False
    assert source["expect_row_count_between"].passed is False  # ROWS + 1 rows now
    started = {
        e.step_key for e in blocked.all_events if e.event_type == dg.DagsterEventType.STEP_START
    }
    assert repair_op not in started, started
    assert not blocked.asset_materializations_for_node(repair_op)

    cql_session.execute(f"DELETE FROM {names.spec.keyspace}.items WHERE id = 999")
    unblocked = repair.execute_in_process(
        instance=instance, partition_key=first_slice, raise_on_error=False
    )
    assert all(e.passed for e in evaluations(unblocked, names.scylla_key).values())
    started = {
        e.step_key for e in unblocked.all_events if e.event_type == dg.DagsterEventType.STEP_START
    }
    assert repair_op in started, started


def test_row_count_parity_passes_on_equal_tables_and_fails_on_missing_rows(
    names, declaration, instance, postgres_dsn
):
    defs = build_definitions(declaration)
    job = defs.resolve_job_def("replication_checks")
    equal = evaluations(
        job.execute_in_process(instance=instance, raise_on_error=False), names.postgres_key
    )
    parity = equal["row_count_parity"]
    assert parity.passed, parity.description
    assert parity.metadata["source_rows"].value == ROWS
    assert parity.metadata["target_rows"].value == ROWS
    assert parity.metadata["source_method"].value == "COUNT(*)"
    # No lag observation and no reconciliation yet: those checks say so instead of passing.
    assert not equal["lag_within_slo"].passed
    assert "lag sensor" in (equal["lag_within_slo"].description or "")
    assert equal["discrepancy_rate"].severity == dg.AssetCheckSeverity.WARN

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id < 3").format(
                sql.Identifier(names.spec.target_schema, "items")
            )
        )
    missing = evaluations(
        job.execute_in_process(instance=instance, raise_on_error=False), names.postgres_key
    )
    assert not missing["row_count_parity"].passed
    assert missing["row_count_parity"].metadata["difference"].value == 3


def test_counts_are_exact_for_small_tables(names, cql_session, postgres_dsn):
    assert source_row_count(cql_session, names.spec).rows == ROWS
    with psycopg.connect(postgres_dsn) as conn:
        counted = target_row_count(conn, names.spec.target_schema, "items")
    assert (counted.rows, counted.exact) == (ROWS, True)


def test_the_source_sample_is_limited_and_holds_no_row_twice(names, cql_session):
    frame = sample_source_rows(cql_session, names.spec, ["id", "Label"], limit=20, seed=7)
    assert 0 < len(frame) <= 20
    assert frame["id"].is_unique
    assert list(frame.columns) == ["id", "Label"]
    everything = sample_source_rows(cql_session, names.spec, ["id"], limit=10_000, seed=7)
    assert sorted(everything["id"]) == list(range(ROWS))
