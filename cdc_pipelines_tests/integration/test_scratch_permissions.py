"""A reconciliation's scratch files hold raw source values: they are owner-only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.reconcile.scratch import ScratchLayout, owner_only_files, write_candidates
from cdc_pipelines.reconcile.table_run import ReconcileOptions, run_reconciliation
from cdc_pipelines.settings import ConnectionSettings
from cdc_pipelines_tests.declarations import replicated

T0 = 1_700_000_000_000_000
VERSION = "_cdc_version"
ROWS = 40


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what most shells give: files 0o644, directories 0o755
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Every directory and file under ``root`` (itself included) with its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_owner_only(root: Path) -> None:
    wrong = {
        name: oct(mode)
        for name, mode in modes(root).items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert wrong == {}, wrong


def test_the_helpers_create_owner_only_paths_and_restore_the_umask(
    tmp_path: Path, open_umask: None
) -> None:
    import pyarrow as pa

    layout = ScratchLayout(tmp_path / "scratch", "ks.t")
    layout.table_dir.mkdir(parents=True, mode=0o755)  # left open by an earlier version
    layout.prepare()
    with owner_only_files():
        write_candidates(layout.candidates("00"), pa.table({"id": [1]}))
    assert_owner_only(layout.table_dir)
    assert os.umask(0o022) == 0o022  # restored


def test_every_scratch_file_of_a_run_is_owner_only(
    tmp_path: Path,
    open_umask: None,
    settings: ConnectionSettings,
    postgres_dsn: str,
    cql_session: object,
    keyspace: str,
    pg_schema: str,
) -> None:
    spec = TableSpec.model_validate(
        {
            "source": f"{keyspace}.t",
            "target": f"{pg_schema}.t",
            "partition_key": ["id"],
            "columns": {"id": "int", "email": "text"},
        }
    )
    table = replicated(spec, version_column=VERSION, slices=4)
    session: object = cql_session
    session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, email text)")  # type: ignore[attr-defined]
    insert = session.prepare(  # type: ignore[attr-defined]
        f"INSERT INTO {keyspace}.t (id, email) VALUES (?, ?) USING TIMESTAMP {T0}"
    )
    for i in range(ROWS):
        session.execute(insert, (i, f"user{i}@example.com"))  # type: ignore[attr-defined]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for statement in create_statements(spec, VERSION):
            conn.execute(statement)
        target = sql.Identifier(pg_schema, "t")
        with (
            conn.cursor() as cursor,
            cursor.copy(
                sql.SQL("COPY {} (id, email, {}) FROM STDIN").format(
                    target, sql.Identifier(VERSION)
                )
            ) as copy,
        ):
            for i in range(ROWS - 5):  # five rows missing in the target
                copy.write_row([i, "stale" if i < 3 else f"user{i}@example.com", T0])
    scratch = tmp_path / "scratch"
    common = {"scratch": scratch, "workers": 2, "settle_seconds": 0, "verify_timeout_s": 5}
    dry = run_reconciliation(table, settings, ReconcileOptions(**common))  # type: ignore[arg-type]
    assert (dry.missing, dry.mismatched) == (5, 3)
    repaired = run_reconciliation(
        table,
        settings,
        ReconcileOptions(**common, repair=True, repair_unconfirmed=True),  # type: ignore[arg-type]
    )
    assert repaired.missing == 5
    table_dir = scratch / spec.source
    names = set(modes(table_dir))
    assert any(n.endswith(".parquet") for n in names), names
    assert any(n.endswith(".sql") for n in names), names
    assert any(n.startswith("target_index/") for n in names), names
    assert_owner_only(table_dir)
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
