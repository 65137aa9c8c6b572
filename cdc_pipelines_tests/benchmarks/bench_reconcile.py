"""Reconciliation against the bare tools, side by side in one run on the devstack.

``python -m cdc_pipelines_tests.benchmarks.bench_reconcile --rows 1000000``

Seeds a table in Cassandra and PostgreSQL (2% drift), then measures:
- source scan rows/s: the slice reader (2 processes) vs ``cqlsh COPY … TO '/dev/null'``;
- target read rows/s against ``psql -c "\\copy (SELECT …) TO '/dev/null'"``, twice: the
  typed read alone (binary COPY into Arrow batches, nothing else) and the whole target
  index pass (read → canonical form → row hash → token → slice files);
- whole reconciliation wall time vs the slower of the two bare scans;
- peak RSS of the reconciliation (its largest process), run in a child process.
cqlsh comes from PyPI into its own virtualenv (``~/.cache/cdc-pipelines/cqlsh-venv``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

from cdc_pipelines.config import PipelineConfig, parse_config
from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.postgres.ddl import apply_ddl, plan_ddl
from cdc_pipelines.reconcile.diff_step import read_source_slice
from cdc_pipelines.reconcile.index_step import build_index
from cdc_pipelines.reconcile.scratch import ScratchLayout
from cdc_pipelines.replicated_table import ReplicatedTable, resolve_spec
from cdc_pipelines.ring.slices import slice_ids
from cdc_pipelines.scylla.schema import create_source_tables
from cdc_pipelines.settings import ConnectionSettings

CQLSH_VENV = Path.home() / ".cache" / "cdc-pipelines" / "cqlsh-venv"
CQLSH_VERSION = "6.2.2"
DRIFT_EVERY = 50  # 2%
SEED_CHUNK = 20_000
SEED_BATCH = 100
READ_REPEATS = 3
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def declaration(name: str, slices: int) -> PipelineConfig:
    return parse_config(f"""
tables:
  - source: {name}.orders
    target: {name}.orders
    partition_key: [id]
    slices: {slices}
    columns: {{id: bigint, region: text, status: text, total: decimal, quantity: int,
               placed_at: timestamp}}
""")


def source_row(i: int) -> tuple[object, ...]:
    return (
        i,
        ("eu-west", "us-east", "ap-south")[i % 3],
        ("new", "paid", "shipped")[i % 3],
        Decimal(i % 100_000) / 100,
        i % 17 + 1,
        EPOCH + dt.timedelta(seconds=i),
    )


def _seed_source_chunk(args: tuple[str, int, int, list[str], int]) -> int:
    from cassandra.cluster import Cluster
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    name, start, stop, hosts, port = args
    cluster = Cluster(hosts, port=port, protocol_version=5)
    session = cluster.connect()
    insert = session.prepare(
        f'INSERT INTO "{name}".orders (id, region, status, total, quantity, placed_at) '
        "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
    # Unlogged batches: one request per SEED_BATCH rows instead of one per row (a single
    # node, so no coordinator fan-out); about 8x the rate of single inserts here.
    for chunk in range(start, stop, SEED_CHUNK):
        batches = []
        for first in range(chunk, min(stop, chunk + SEED_CHUNK), SEED_BATCH):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for i in range(first, min(stop, chunk + SEED_CHUNK, first + SEED_BATCH)):
                batch.add(insert, (*source_row(i), 1_700_000_000_000_000 + i))
            batches.append((batch, ()))
        execute_concurrent(session, batches, concurrency=16, raise_on_first_error=True)
    cluster.shutdown()
    return stop - start


def seed(config: PipelineConfig, settings: ConnectionSettings, rows: int) -> None:
    from cdc_pipelines.scylla.session import cql_session

    table = config.tables[0]
    with cql_session(settings) as session:
        create_source_tables(session, config)
    workers = 2
    step = -(-rows // workers)
    with ProcessPoolExecutor(workers) as pool:
        list(
            pool.map(
                _seed_source_chunk,
                [
                    (
                        table.keyspace,
                        w * step,
                        min(rows, (w + 1) * step),
                        list(settings.scylla_contact_points),
                        settings.scylla_port,
                    )
                    for w in range(workers)
                ],
            )
        )
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        apply_ddl(conn, plan_ddl(conn, table, config.defaults.version_column))
        copy = sql.SQL(
            "COPY {}.orders (id, region, status, total, quantity, placed_at, _cdc_version_us) "
            "FROM STDIN"
        ).format(sql.Identifier(table.target_schema))
        with conn.cursor() as cur, cur.copy(copy) as writer:
            for i in range(rows):
                if i % DRIFT_EVERY == 1:
                    continue  # missing in the target
                values = list(source_row(i))
                if i % DRIFT_EVERY == 2:
                    values[2] = "lost-update"  # mismatched
                writer.write_row([*values, 1_700_000_000_000_000 + i])
            for i in range(rows, rows + rows // (DRIFT_EVERY * 2)):
                writer.write_row([*source_row(i), 1])  # extra
        conn.execute(sql.SQL("ANALYZE {}.orders").format(sql.Identifier(table.target_schema)))


def timed(fn, *args, **kwargs) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def cqlsh_copy(name: str, settings: ConnectionSettings) -> float:
    if not (CQLSH_VENV / "bin" / "cqlsh").exists():
        subprocess.run([sys.executable, "-m", "venv", str(CQLSH_VENV)], check=True)
        subprocess.run(
            [str(CQLSH_VENV / "bin" / "pip"), "install", "-q", f"cqlsh=={CQLSH_VERSION}"],
            check=True,
        )
    command = [
        str(CQLSH_VENV / "bin" / "cqlsh"),
        settings.scylla_contact_points[0],
        str(settings.scylla_port),
        "--request-timeout=120",
        "-e",
        f"COPY \"{name}\".orders (id, region, status, total, quantity, placed_at) TO '/dev/null' "
        "WITH NUMPROCESSES=2",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def psql_copy(name: str, settings: ConnectionSettings) -> float:
    query = (
        f"\\copy (SELECT id, region, status, total, quantity, placed_at, _cdc_version_us "
        f"FROM \"{name}\".orders) TO '/dev/null'"
    )
    started = time.perf_counter()
    subprocess.run(["psql", settings.postgres_dsn, "-q", "-c", query], check=True)
    return time.perf_counter() - started


def typed_read(config: PipelineConfig, settings: ConnectionSettings) -> int:
    """The target read alone: every batch of the typed read, consumed and dropped."""
    from cdc_pipelines.postgres.arrow_read import read_target_batches
    from cdc_pipelines.postgres.target_index import select_expression

    table = resolve_spec(config, config.tables[0])
    with read_target_batches(
        settings.postgres_dsn, table.spec, table.canonical, select_expression
    ) as batches:
        return sum(batch.num_rows for batch in batches)


def _scan_slice_rows(table: ReplicatedTable, slice_id: str, settings: ConnectionSettings) -> int:
    """Rows of one slice as read by the source reader (the scan alone)."""
    return read_source_slice(table, slice_id, settings).num_rows


def source_scan(config: PipelineConfig, settings: ConnectionSettings) -> int:
    table = resolve_spec(config, config.tables[0])
    ids = slice_ids(table.slices)
    with ProcessPoolExecutor(2) as pool:
        counts = pool.map(_scan_slice_rows, [table] * len(ids), ids, [settings] * len(ids))
        return sum(counts)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def _sample_peaks(root: int, peaks: dict[int, int], done: threading.Event) -> None:
    """Each process's own peak RSS (VmHWM, KiB) under ``root``, sampled every 200 ms.

    Slice workers run under a fork server, so they are grandchildren that
    RUSAGE_CHILDREN would not always count; VmHWM is read from every descendant.
    """
    while not done.is_set():
        for pid in _descendants(root):
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peaks[pid] = max(peaks.get(pid, 0), int(line.split()[1]))
            except OSError:
                continue
        done.wait(0.2)


def whole_run_in_child(
    config: PipelineConfig, scratch: str
) -> tuple[float, int, dict[str, object]]:
    code = (
        "import json, sys, time\n"
        "from cdc_pipelines.config import PipelineConfig\n"
        "from cdc_pipelines.reconcile.table_run import ReconcileOptions, run_reconciliation\n"
        "from cdc_pipelines.replicated_table import resolve_spec\n"
        "from cdc_pipelines.settings import ConnectionSettings\n"
        "config = PipelineConfig.model_validate_json(sys.argv[1])\n"
        "t = time.perf_counter()\n"
        "report = run_reconciliation(resolve_spec(config, config.tables[0]),\n"
        "    ConnectionSettings.from_env(),\n"
        "    ReconcileOptions(scratch=__import__('pathlib').Path(sys.argv[2]), workers=2, settle_seconds=0))\n"
        "print(json.dumps({'wall': time.perf_counter() - t, 'missing': report.missing,\n"
        "    'extra': report.extra, 'mismatched': report.mismatched, 'rows': report.source_rows}))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, config.model_dump_json(), scratch],
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
    if process.returncode:
        raise RuntimeError(f"the reconciliation failed:\n{stderr[-3000:]}")
    peak_kib = max(peaks.values(), default=0)
    result = subprocess.CompletedProcess(process.args, 0, stdout, stderr)
    document = json.loads(result.stdout.strip().splitlines()[-1])
    return float(document["wall"]), peak_kib, document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the seeded tables")
    parser.add_argument(
        "--reuse", metavar="NAME", help="measure tables seeded by an earlier --keep run"
    )
    args = parser.parse_args()
    for key, value in stack.stack_env(StackLayout.from_env()).items():
        os.environ.setdefault(key, value)
    settings = ConnectionSettings.from_env()
    name = args.reuse or f"bench_{uuid.uuid4().hex[:8]}"
    config = declaration(name, args.slices)
    if not args.reuse:
        seed_s, _ = timed(seed, config, settings, args.rows)
        print(f"seeded {args.rows} rows into {name} in {seed_s:.1f}s", file=sys.stderr)

    cqlsh_s = cqlsh_copy(name, settings)
    scan_s, scanned = timed(source_scan, config, settings)
    # The two target reads take about a second each and vary by ±20% on two shared cores:
    # best of READ_REPEATS each, alternating.
    psql_runs, read_runs, index_runs = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(READ_REPEATS):
            psql_runs.append(psql_copy(name, settings))
            read_runs.append(timed(typed_read, config, settings)[0])
            table = resolve_spec(config, config.tables[0])
            layout = ScratchLayout(Path(scratch), table.source)
            index_runs.append(timed(build_index, table, settings, layout)[0])
        psql_s, read_s, index_s = min(psql_runs), min(read_runs), min(index_runs)
        wall_s, peak_kib, outcome = whole_run_in_child(config, scratch)
    target_rows = args.rows - args.rows // DRIFT_EVERY + args.rows // (DRIFT_EVERY * 2)
    bare = max(cqlsh_s, psql_s)
    results = {
        "rows": args.rows,
        "source scan rows/s (ours, 2 processes)": scanned / scan_s,
        "source scan rows/s (cqlsh COPY TO, 2 processes)": args.rows / cqlsh_s,
        "source scan ratio (target >= 1.5)": cqlsh_s / scan_s,
        "target read rows/s (psql \\copy)": target_rows / psql_s,
        "target read rows/s (ours: typed read into Arrow)": target_rows / read_s,
        "target read ratio (target >= 0.8)": psql_s / read_s,
        "target index pass rows/s (read + canonical + hash + token + slice files)": target_rows
        / index_s,
        "target index pass / psql \\copy": psql_s / index_s,
        "reconciliation wall s": wall_s,
        "slower bare scan s": bare,
        "wall / slower bare scan (target <= 1.1)": wall_s / bare,
        "peak RSS MiB": peak_kib / 1024,
        "reported missing/extra/mismatched": f"{outcome['missing']}/{outcome['extra']}/{outcome['mismatched']}",
    }
    print("| measure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:,.2f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if not args.keep and not args.reuse:
        from cdc_pipelines.scylla.session import cql_session

        with cql_session(settings) as session:
            session.execute(f'DROP KEYSPACE IF EXISTS "{name}"')
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
