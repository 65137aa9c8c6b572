"""Adding a table to a running pipeline, as a user does it, while the stream carries new writes.

declare → ``ddl apply`` → ``connectors apply`` → ``reconcile --repair`` as the initial load
(rows written before the table's stream began never arrive through CDC) → a rerun reports 0.
Writes stream through Connect during the load; none of them may be overwritten by it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psycopg
from psycopg import sql

from cdc_pipelines.config import parse_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_configs
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines_tests.declarations import all_types_yaml
from cdc_pipelines_tests.e2e.test_streaming_path import row

HISTORY = 1500  # rows written before the stream began: only the initial load brings them
STREAMED_UPDATES = 60  # existing keys updated through the stream during the load
STREAMED_NEW = 60
APPLY_TIMEOUT_S = 120


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )


def target_rows(dsn: str, schema: str) -> dict[int, str | None]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, c_text FROM {}.all_types").format(sql.Identifier(schema))
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_a_new_table_is_loaded_while_the_stream_runs_and_then_reconciles_clean(
    cql_session, postgres_dsn, connect_url, kafka_bootstrap, unique_name, tmp_path
):
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(all_types_yaml(unique_name))
    config = parse_config(declaration.read_text(), str(declaration))
    (table,) = config.tables
    create_source_tables(cql_session, config)
    source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
    source.upsert([row(i, c_text=f"history {i}") for i in range(HISTORY)], silent=True)
    client = ConnectClient(connect_url)
    try:
        for step in (("ddl", "apply"), ("connectors", "apply", "--sinks-only")):
            done = cli(*step, "--config", str(declaration))
            assert done.returncode == 0, done.stderr

        streamed: dict[int, str] = {}
        stop = threading.Event()

        def stream() -> None:
            for n in range(STREAMED_UPDATES + STREAMED_NEW):
                if stop.is_set():
                    return
                key = n if n < STREAMED_UPDATES else HISTORY + n
                text = f"streamed {n}"
                source.upsert([row(key, c_text=text)], now_us())
                source.flush()
                streamed[key] = text
                time.sleep(0.05)

        writer = threading.Thread(target=stream)
        writer.start()
        scratch = str(tmp_path / "scratch")
        base = ["reconcile", table.source, "--config", str(declaration), "--scratch", scratch]
        load = cli(*base, "--repair", "--settle-seconds", "0")
        writer.join()
        assert load.returncode in (0, 1), load.stderr  # 1: rows still in flight at the end
        loaded = json.loads(load.stdout)
        assert loaded["missing"] >= HISTORY - STREAMED_UPDATES and loaded["target_ahead"] == 0

        expected = HISTORY + STREAMED_NEW
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        while len(target_rows(postgres_dsn, unique_name)) < expected:
            assert time.monotonic() < deadline, "the sink did not apply the streamed rows"
            time.sleep(0.5)
        # The stream's writes are newer than the historical rows the load copied: none of
        # them was overwritten, whichever of the two reached PostgreSQL first.
        time.sleep(2)  # the last events settle
        rows = target_rows(postgres_dsn, unique_name)
        assert {k: rows[k] for k in streamed} == streamed

        again = cli(*base, "--settle-seconds", "0")
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        found = (report["missing"], report["extra"], report["mismatched"], report["target_ahead"])
        assert found == (0, 0, 0, 0)
        assert report["source_rows"] == report["target_rows"] == expected
    finally:
        for sink in sink_connector_configs(config):
            client.delete(sink.name)
        cql_session.execute(f'DROP KEYSPACE IF EXISTS "{unique_name}"')
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name))
            )
