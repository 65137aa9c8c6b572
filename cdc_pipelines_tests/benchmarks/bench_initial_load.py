"""Initial load of a new table: ``reconcile --repair`` into an empty target against the bare tools.

Scylla's CDC connector has no snapshot, so reconciliation with repair is how a table's rows
written before its stream began reach PostgreSQL. Baseline, same rows, same run: the
source read by ``cqlsh COPY TO`` into a CSV file (2 processes), then ``psql \\copy`` of that
file into an empty copy of the target. Ours runs in a child process so its peak RSS (the
largest VmHWM over its process tree) is its own.

    python -m cdc_pipelines_tests.benchmarks.bench_initial_load --rows 1000000 [--keep]
        [--drift 0.5]

With ``--drift SHARE``, the loaded table is then reconciled with repair twice more: once as
it is (no drift: the baseline) and once after SHARE of its rows were damaged in PostgreSQL
(half deleted, half changed), so the figure is the 50%-drift repair against a clean run of
the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.replicated_table import resolve_spec
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import ConnectionSettings
from cdc_pipelines_tests.benchmarks.bench_reconcile import (
    CQLSH_VENV,
    CQLSH_VERSION,
    _sample_peaks,
    _seed_source_chunk,
    declaration,
)

COLUMNS = "id, region, status, total, quantity, placed_at"
SEED_WORKERS = 2


def seed_source(config: PipelineConfig, settings: ConnectionSettings, rows: int) -> None:
    """The source table with ``rows`` rows and an empty target table."""
    table = config.tables[0]
    with cql_session(settings) as session:
        create_source_tables(session, config)
    step = -(-rows // SEED_WORKERS)
    hosts = list(settings.scylla_contact_points)
    chunks = [
        (table.keyspace, w * step, min(rows, (w + 1) * step), hosts, settings.scylla_port)
        for w in range(SEED_WORKERS)
    ]
    with ProcessPoolExecutor(SEED_WORKERS) as pool:
        list(pool.map(_seed_source_chunk, chunks))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
    # As after `connectors apply`: the table's topic exists (empty here), so the sink's
    # catch-up can be confirmed and repair acts.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers})
    topic = resolve_spec(config, table).topic
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout=30)


def empty_target(config: PipelineConfig, settings: ConnectionSettings) -> None:
    table = config.tables[0]
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {}").format(sql.Identifier(table.target_schema, table.target_table))
        )


def bare_tools(name: str, settings: ConnectionSettings, scratch: Path) -> tuple[float, float]:
    """Seconds for ``cqlsh COPY TO`` a CSV file and for ``psql \\copy`` of it into PostgreSQL."""
    if not (CQLSH_VENV / "bin" / "cqlsh").exists():
        subprocess.run([sys.executable, "-m", "venv", str(CQLSH_VENV)], check=True)
        pip = str(CQLSH_VENV / "bin" / "pip")
        subprocess.run([pip, "install", "-q", f"cqlsh=={CQLSH_VERSION}"], check=True)
    csv_file = scratch / "orders.csv"
    started = time.perf_counter()
    subprocess.run(
        [
            str(CQLSH_VENV / "bin" / "cqlsh"),
            settings.scylla_contact_points[0],
            str(settings.scylla_port),
            "--request-timeout=120",
            "-e",
            f"COPY \"{name}\".orders ({COLUMNS}) TO '{csv_file}' WITH NUMPROCESSES=2",
        ],
        check=True,
        capture_output=True,
    )
    scan_s = time.perf_counter() - started
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}".orders_bare')
        conn.execute(f'CREATE TABLE "{name}".orders_bare (LIKE "{name}".orders INCLUDING ALL)')
    started = time.perf_counter()
    subprocess.run(
        [
            "psql",
            settings.postgres_dsn,
            "-q",
            "-c",
            f"\\copy \"{name}\".orders_bare ({COLUMNS}) FROM '{csv_file}' CSV",
        ],
        check=True,
    )
    return scan_s, time.perf_counter() - started


def damage_target(config: PipelineConfig, settings: ConnectionSettings, share: float) -> int:
    """Delete half of ``share`` of the target's rows and change the other half; rows hit."""
    table = config.tables[0]
    target = sql.Identifier(table.target_schema, table.target_table)
    every = max(1, round(1 / share))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE id %% %s = 0").format(target), (2 * every,)
        ).rowcount
        changed = conn.execute(
            sql.SQL("UPDATE {} SET status = 'damaged' WHERE id %% %s = %s").format(target),
            (2 * every, every),
        ).rowcount
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(target))
    return deleted + changed


def ours_in_child(config: PipelineConfig, scratch: Path) -> tuple[float, int, dict[str, object]]:
    """Wall seconds, peak RSS (KiB, largest process) and the report of ``reconcile --repair``."""
    code = (
        "import json, sys, time, pathlib\n"
        "from cdc_pipelines.config import PipelineConfig\n"
        "from cdc_pipelines.reconcile.table_run import ReconcileOptions, run_reconciliation\n"
        "from cdc_pipelines.replicated_table import resolve_spec\n"
        "from cdc_pipelines.settings import ConnectionSettings\n"
        "if __name__ == '__main__':\n"
        "    config = PipelineConfig.model_validate_json(sys.argv[1])\n"
        "    options = ReconcileOptions(scratch=pathlib.Path(sys.argv[2]), repair=True,\n"
        "        settle_seconds=0)\n"
        "    t = time.perf_counter()\n"
        "    report = run_reconciliation(resolve_spec(config, config.tables[0]),\n"
        "        ConnectionSettings.from_env(), options)\n"
        "    print(json.dumps({'wall': time.perf_counter() - t, 'missing': report.missing,\n"
        "        'upserted': report.repaired['upserted'], 'remaining': report.remaining}))\n"
    )
    script = scratch / "initial_load.py"
    script.write_text(code)
    process = subprocess.Popen(
        [sys.executable, str(script), config.model_dump_json(), str(scratch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks: dict[int, int] = {}
    done = threading.Event()
    sampler = threading.Thread(target=_sample_peaks, args=(process.pid, peaks, done))
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"reconcile --repair failed:\n{stderr}")
    document = json.loads(stdout.strip().splitlines()[-1])
    return float(document["wall"]), max(peaks.values(), default=0), document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the seeded tables")
    parser.add_argument("--reuse", metavar="NAME", help="load tables seeded by a --keep run")
    parser.add_argument(
        "--drift",
        type=float,
        metavar="SHARE",
        help="then time a repair of SHARE damaged rows against a clean reconciliation",
    )
    args = parser.parse_args()
    for key, value in stack.stack_env(StackLayout.from_env()).items():
        os.environ.setdefault(key, value)
    settings = ConnectionSettings.from_env()
    name = args.reuse or f"bench_{uuid.uuid4().hex[:8]}"
    config = declaration(name, args.slices)
    if not args.reuse:
        started = time.perf_counter()
        seed_source(config, settings, args.rows)
        print(f"seeded {args.rows} rows in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            empty_target(config, settings)
            scan_s, copy_s = bare_tools(name, settings, Path(scratch))
            wall_s, peak_kib, report = ours_in_child(config, Path(scratch))
            drift: dict[str, object] = {}
            if args.drift:
                clean_s, _, clean = ours_in_child(config, Path(scratch))
                damaged = damage_target(config, settings, args.drift)
                healed_s, healed_kib, healed = ours_in_child(config, Path(scratch))
                drift = {
                    "clean reconcile --repair (s)": round(clean_s, 1),
                    "clean report": clean,
                    "rows damaged": damaged,
                    "damaged reconcile --repair (s)": round(healed_s, 1),
                    "damaged report": healed,
                    "drift ratio vs clean": round(healed_s / clean_s, 2),
                    "damaged peak RSS (MiB)": round(healed_kib / 1024),
                }
        bare_s = scan_s + copy_s
        print(
            json.dumps(
                {
                    "rows seeded": None if args.reuse else args.rows,
                    "rows": report["missing"],  # every source row (the target was empty)
                    "bare: cqlsh COPY TO (s)": round(scan_s, 1),
                    "bare: psql \\copy (s)": round(copy_s, 1),
                    "bare total (s)": round(bare_s, 1),
                    "reconcile --repair (s)": round(wall_s, 1),
                    "ratio vs bare": round(wall_s / bare_s, 2),
                    "peak RSS (MiB)": round(peak_kib / 1024),
                    "report": report,
                    **drift,
                },
                indent=2,
            )
        )
    finally:
        if not args.keep:
            with cql_session(settings) as session:
                session.execute(f'DROP KEYSPACE IF EXISTS "{name}"')
            with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


if __name__ == "__main__":
    main()
