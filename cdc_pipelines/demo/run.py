"""The README's demo: the local stack, then the pipeline end to end on it.

1. bring the devstack up; 2. create the demo keyspace (Cassandra) and schema
(PostgreSQL) from the example declaration; 3. deploy the JDBC sinks through
Kafka Connect; 4. stream rows through Kafka (the Scylla CDC source is emulated:
each write also produces the connector's envelope); 5. inject drift the stream
does not see; 6. reconcile through Dagster and repair; 7. say how to open the UI.
The demo owns the ``demo`` keyspace and schema of the local stack: it recreates them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
from psycopg import sql

from cdc_pipelines.config import PipelineConfig, TableSpec, load_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_configs
from cdc_pipelines.demo.dagster_runs import reconcile_demo
from cdc_pipelines.demo.data import demo_rows
from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.devstack.stack import Reporter
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines.scylla.session import cql_session, quote_cql
from cdc_pipelines.settings import ConnectionSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_ROWS = {"orders": 20_000, "all_types": 2_000}
CATCH_UP_TIMEOUT_S = 180.0


def run_demo(report: Reporter) -> int:
    layout = StackLayout.from_env()
    statuses = stack.up(layout, report=report)
    unhealthy = [s.health.service for s in statuses if not s.health.healthy]
    if unhealthy:
        report(f"demo stopped: {', '.join(unhealthy)} not healthy")
        return 3
    for name, value in stack.stack_env(layout).items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("CDC_PIPELINE_CONFIG", str(REPO_ROOT / "pipeline.yaml"))
    config = load_config()
    settings = ConnectionSettings.from_env()
    client = ConnectClient(settings.connect_url)

    report("== 1. source and target tables from the declaration")
    reset_demo(config, settings, client)
    with cql_session(settings, config.scylla) as session:
        for statement in create_source_tables(session, config):
            report(f"   cql> {statement[:110]}{'…' if len(statement) > 110 else ''}")
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            for table in config.tables:
                plan = plan_ddl(conn, table, config.defaults.version_column)
                apply_ddl(conn, plan)
                report(f"   pg>  {plan.describe()}")

        report("== 2. JDBC sinks deployed through Kafka Connect")
        for change in client.apply(sink_connector_configs(config)):
            report(f"   {change.describe()}")

        report("== 3. streaming rows through Kafka into PostgreSQL")
        sources = {
            t.source: EmulatedCdcSource(session, settings.kafka_bootstrap_servers, config, t)
            for t in config.tables
        }
        for table in config.tables:
            if table.canary is not None:
                continue  # its one row is the canary probe's (step 5)
            rows = demo_rows(table, DEMO_ROWS.get(table.table, 1000))
            started = time.monotonic()
            sources[table.source].upsert(rows)
            sources[table.source].flush()
            wait_for_rows(settings, table, len(rows), report)
            elapsed = time.monotonic() - started
            report(f"   {table.source}: {len(rows)} rows written and applied in {elapsed:.1f}s")

        report("== 4. drift the stream does not carry")
        inject_drift(config, settings, sources[config.tables[0].source], report)

    report("== 5. reconciliation")
    outcome = reconcile_demo(config, settings, report)
    report("== 6. the Dagster UI")
    report(
        '   eval "$(.venv/bin/cdc-pipelines stack env)" && '
        "DAGSTER_HOME=$PWD/dagster_home .venv/bin/dagster dev -w workspace.yaml"
    )
    report("   then open http://127.0.0.1:3000 (asset graph: scylla → kafka → postgres → …)")
    return outcome


def reset_demo(config: PipelineConfig, settings: ConnectionSettings, client: ConnectClient) -> None:
    """Drop what a previous demo left: sinks, the demo keyspaces and schemas."""
    for connector in sink_connector_configs(config):
        client.delete(connector.name)
    with cql_session(settings, config.scylla) as session:
        for keyspace in {t.keyspace for t in config.tables}:
            session.execute(f"DROP KEYSPACE IF EXISTS {quote_cql(keyspace)}")
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for schema in {t.target_schema for t in config.tables}:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def target_count(settings: ConnectionSettings, table: TableSpec) -> int:
    with psycopg.connect(settings.postgres_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(table.target_schema), sql.Identifier(table.target_table)
            )
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for_rows(
    settings: ConnectionSettings, table: TableSpec, expected: int, report: Reporter
) -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    count = target_count(settings, table)
    while count < expected and time.monotonic() < deadline:
        time.sleep(1)
        count = target_count(settings, table)
    if count < expected:
        raise ServiceError(
            f"{table.target}: the sink applied {count} of {expected} rows in "
            f"{CATCH_UP_TIMEOUT_S:.0f}s; see 'cdc-pipelines connectors status --sinks-only'"
        )


def inject_drift(
    config: PipelineConfig,
    settings: ConnectionSettings,
    source: EmulatedCdcSource,
    report: Reporter,
) -> None:
    """Drift in the first table that the stream never carried: rows PostgreSQL lost, rows
    changed behind the sink's back, and rows only PostgreSQL has (a stray writer)."""
    table = source.table
    target = sql.SQL("{}.{}").format(
        sql.Identifier(table.target_schema), sql.Identifier(table.target_table)
    )
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        deleted = conn.execute(
            sql.SQL("DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} LIMIT 5)").format(t=target)
        ).rowcount
        changed = conn.execute(
            sql.SQL(
                "UPDATE {t} SET {status} = 'lost-update' WHERE ctid IN "
                "(SELECT ctid FROM {t} OFFSET 100 LIMIT 4)"
            ).format(t=target, status=sql.Identifier("status"))
        ).rowcount
    extra_rows = demo_rows(table, 3, seed=99)
    columns = [c.name for c in table.replicated_columns]
    insert = sql.SQL("INSERT INTO {t} ({cols}, {version}) VALUES ({values}, %s)").format(
        t=target,
        cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
        version=sql.Identifier(config.defaults.version_column),
        values=sql.SQL(", ").join(sql.Placeholder() * len(columns)),
    )
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for row in extra_rows:
            row["CustomerId"] = 9_000_000 + int(str(row["CustomerId"]))
            values = [sorted(v) if isinstance(v, set) else v for v in (row[c] for c in columns)]
            conn.execute(insert, [*values, now_us()])
    report(
        f"   {table.target}: deleted {deleted} rows and changed {changed} in PostgreSQL; "
        f"{len(extra_rows)} rows exist only in PostgreSQL"
    )
