"""The suite keeps Dagster's runs and events in its own storage, never in the user's instance.

The README's instance is ``dagster_home/dagster.yaml`` on the ``dagster`` database; the
tests write to ``dagster_test`` (see ``dagster_storage`` in the root conftest), also when
code opens ``dagster_home/`` itself as the demo does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from psycopg import sql

from cdc_pipelines_tests.conftest import DAGSTER_TEST_DB, DagsterStorage, database_of, libpq_url

USER_HOME = Path(__file__).resolve().parents[2] / "dagster_home"


def records_of(url: str, key: dg.AssetKey, run_id: str) -> dict[str, int]:
    """How many events of ``key``, catalog entries of ``key`` and runs ``run_id`` a storage holds."""
    found = {"events": 0, "asset_keys": 0, "runs": 0}
    with psycopg.connect(libpq_url(url)) as conn:
        for table, column, value in (
            ("event_logs", "asset_key", key.to_string()),
            ("asset_keys", "asset_key", key.to_string()),
            ("runs", "run_id", run_id),
        ):
            exists: Any = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if exists[0] is None:  # Dagster never wrote to this database
                continue
            query = sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(table), sql.Identifier(column)
            )
            count: Any = conn.execute(query, (value,)).fetchone()
            found["events" if table == "event_logs" else table] = int(count[0])
    return found


def test_the_tests_storage_is_not_the_users_instance(dagster_storage: DagsterStorage):
    assert database_of(dagster_storage.url) == DAGSTER_TEST_DB
    assert database_of(dagster_storage.user_url) != DAGSTER_TEST_DB
    assert dagster_storage.home.resolve() != USER_HOME.resolve()


def test_a_materialization_in_the_test_instance_leaves_no_record_in_the_users_instance(
    instance: dg.DagsterInstance, dagster_storage: DagsterStorage, unique_name: str
):
    key = dg.AssetKey(["isolation_probe", unique_name])

    @dg.asset(key=key)
    def probe() -> int:
        return 1

    result = dg.materialize([probe], instance=instance)
    assert result.success
    in_tests = records_of(dagster_storage.url, key, result.run_id)
    assert in_tests["events"] > 0 and in_tests["asset_keys"] == 1 and in_tests["runs"] == 1
    assert records_of(dagster_storage.user_url, key, result.run_id) == {
        "events": 0,
        "asset_keys": 0,
        "runs": 0,
    }


def test_code_that_opens_dagster_home_itself_reaches_the_test_storage(
    dagster_storage: DagsterStorage, unique_name: str
):
    """The demo (and any test copying dagster_home) opens the README's instance by path."""
    key = dg.AssetKey(["isolation_probe", unique_name])

    @dg.asset(key=key)
    def probe() -> int:
        return 2

    opened = dg.DagsterInstance.from_config(str(USER_HOME))
    try:
        result = dg.materialize([probe], instance=opened)
    finally:
        opened.dispose()
    assert result.success
    assert records_of(dagster_storage.url, key, result.run_id)["runs"] == 1
    assert records_of(dagster_storage.user_url, key, result.run_id) == {
        "events": 0,
        "asset_keys": 0,
        "runs": 0,
    }
