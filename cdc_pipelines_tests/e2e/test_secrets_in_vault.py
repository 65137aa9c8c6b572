"""Secrets live only in Vault (ADR 0012): Connect resolves ``${vault:…}`` references with the
project's VaultConfigProvider, the CLI and Dagster read the same secret through
``CDC_VAULT_SECRET_PATH``, no output of the pipeline carries a secret, and a password rotated
in PostgreSQL and Vault is taken up by Connect (``connectors restart --all``) and the CLI
without editing a file.

The test owns its secret (``secret/cdc/test-<name>``, inside the Connect worker's policy) and
its PostgreSQL login (a member of ``cdc_password_login``, whose password the stack's
PostgreSQL checks over TCP), so the shared stack's own secret and login are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import hvac
import psycopg
import pyarrow.parquet as pq
import pytest
import requests
from dagster._serdes import serialize_value
from psycopg import sql

from cdc_pipelines.config import parse_config
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.connect.configs import sink_connector_configs
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import table_names
from cdc_pipelines.defs.resources import ScratchStorageResource, default_resources
from cdc_pipelines.devstack.layout import OPENBAO_KV_MOUNT, POSTGRES_PASSWORD_GROUP, StackLayout
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.schema import create_source_tables

ROWS = 40
DELETED_IN_TARGET = (3, 17)
APPLY_TIMEOUT_S = 120


def declaration_yaml(name: str, vault_path: str) -> str:
    return f"""\
version: 1
connectors:
  topic_prefix: {name}
  sink_name_prefix: {name}-sink
  dlq_topic: {name}-dlq
  secrets: {{provider: vault, vault_path: "{vault_path}"}}
tables:
  - source: {name}.people
    target: {name}.people
    partition_key: [id]
    slices: 2
    columns: {{id: int, email: text, name: text}}
    mask: {{email: hash}}
"""


def person(i: int, generation: str = "a") -> dict[str, object]:
    return {"id": i, "email": f"user{i}-{generation}@example.org", "name": f"Person {i}"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def wait_for_rows(dsn: str, schema: str, expected: set[int]) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    query = sql.SQL("SELECT id FROM {}.people").format(sql.Identifier(schema))
    found: set[int] = set()
    while time.monotonic() < deadline:
        with psycopg.connect(dsn) as conn:
            found = {r[0] for r in conn.execute(query).fetchall()}
        if expected <= found:
            return
        time.sleep(0.5)
    raise AssertionError(f"the sink applied {len(found & expected)} of {len(expected)} rows")


@pytest.fixture
def vault() -> hvac.Client:
    url, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not url or not token:
        pytest.fail("VAULT_ADDR and VAULT_TOKEN are not set; run 'cdc-pipelines stack up'")
    return hvac.Client(url=url, token=token, timeout=10)


@pytest.fixture
def secrets(unique_name: str) -> dict[str, str]:
    """Known, unique values: none of them may show anywhere but in Vault."""
    return {
        "postgres.user": f"cdc_{unique_name}",
        "postgres.password": f"pg-pw-{uuid.uuid4().hex}",
        "mask.salt": f"salt-{uuid.uuid4().hex}",
        "scylla.user": f"scylla_{unique_name}",
        "scylla.password": f"scylla-pw-{uuid.uuid4().hex}",
    }


@pytest.fixture
def login(
    postgres_dsn: str, vault: hvac.Client, unique_name: str, secrets: dict[str, str]
) -> Iterator[str]:
    """The test's PostgreSQL login and its Vault secret; both removed afterwards."""
    role = secrets["postgres.user"]
    path = f"cdc/test-{unique_name}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role),
                sql.Literal(secrets["postgres.password"]),
                sql.Identifier(POSTGRES_PASSWORD_GROUP),
            )
        )
    vault.secrets.kv.v2.create_or_update_secret(
        path=path, secret=secrets, mount_point=OPENBAO_KV_MOUNT
    )
    try:
        yield f"{OPENBAO_KV_MOUNT}/data/{path}"
    finally:
        vault.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=OPENBAO_KV_MOUNT
        )
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name))
            )
            user = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            conn.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(role), sql.Identifier(user)
                )
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def connect_log_offsets(layout: StackLayout) -> dict[Path, int]:
    logs = [layout.logs / "connect.log", layout.logs / "connect.out"]
    return {path: path.stat().st_size if path.exists() else 0 for path in logs}


def connect_log_since(offsets: dict[Path, int]) -> str:
    text = []
    for path, offset in offsets.items():
        with path.open("rb") as log:
            log.seek(offset)
            text.append(log.read().decode(errors="replace"))
    return "\n".join(text)


def scratch_texts(root: Path) -> dict[str, str]:
    """Every file under ``root`` as text; Parquet files as their decoded rows as well (a
    compressed page would hide a value from a byte search)."""
    found: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        found[str(path)] = path.read_bytes().decode(errors="replace")
        if path.suffix == ".parquet":
            found[f"{path} (rows)"] = repr(pq.read_table(path).to_pylist())
    return found


def assert_no_secret(where: str, text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text, f"a secret ({value[:6]}…) shows in {where}"


def test_secrets_come_from_vault_never_leak_and_a_rotated_password_is_taken_up(
    cql_session,
    postgres_dsn,
    connect_url,
    kafka_bootstrap,
    unique_name,
    tmp_path,
    vault,
    secrets,
    login,
    instance,
    monkeypatch,
):
    layout = StackLayout.from_env()
    log_offsets = connect_log_offsets(layout)
    declaration = tmp_path / "pipeline.yaml"
    declaration.write_text(declaration_yaml(unique_name, login))
    config = parse_config(declaration.read_text(), str(declaration))
    (table,) = config.tables
    (sink,) = sink_connector_configs(config)
    # No login in the DSN: the CLI and Dagster take it from Vault.
    no_login_dsn = "postgresql://127.0.0.1:5432/cdc"
    env = {
        **os.environ,
        "CDC_VAULT_SECRET_PATH": login,
        "CDC_POSTGRES_DSN": no_login_dsn,
        "CDC_PIPELINE_CONFIG": str(declaration),
    }
    outputs: dict[str, str] = {"generated sink config": json.dumps(sink.as_dict())}
    client = ConnectClient(connect_url)
    secret_values = [
        secrets["postgres.password"],
        secrets["mask.salt"],
        secrets["scylla.password"],
    ]
    try:
        create_source_tables(cql_session, config)
        for args in (("ddl", "apply"), ("connectors", "apply", "--sinks-only")):
            done = cli(env, *args, "--config", str(declaration))
            assert done.returncode == 0, done.stderr
            outputs[" ".join(args)] = done.stdout + done.stderr
        assert sink.config["connection.password"] == f"${{vault:{login}:postgres.password}}"
        assert sink.config["transforms.maskHashed.salt.secret"] == f"${{vault:{login}:mask.salt}}"

        source = EmulatedCdcSource(cql_session, kafka_bootstrap, config, table)
        source.upsert([person(i) for i in range(ROWS)], now_us())
        source.flush()
        wait_for_rows(postgres_dsn, unique_name, set(range(ROWS)))
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DELETE FROM {}.people WHERE id = ANY(%s)").format(
                    sql.Identifier(unique_name)
                ),
                (list(DELETED_IN_TARGET),),
            )

        scratch = tmp_path / "scratch"
        dry = cli(
            env,
            *("reconcile", f"{unique_name}.people", "--config", str(declaration)),
            *("--scratch", str(scratch), "--report", str(tmp_path / "dry.json")),
        )
        assert dry.returncode == 1, dry.stderr
        report = json.loads((tmp_path / "dry.json").read_text())
        assert report["missing"] == len(DELETED_IN_TARGET)
        assert report["dry_run_sql_path"] and Path(report["dry_run_sql_path"]).exists()
        repair = cli(
            env,
            *("reconcile", f"{unique_name}.people", "--config", str(declaration), "--repair"),
            *("--scratch", str(scratch), "--report", str(tmp_path / "repair.json")),
        )
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert json.loads((tmp_path / "repair.json").read_text())["repaired"]["upserted"] == 2
        outputs["reconcile (dry run)"] = dry.stdout + dry.stderr
        outputs["reconcile --repair"] = repair.stdout + repair.stderr

        # Dagster, in process on the tests' instance, with the resources bound to the env.
        monkeypatch.setenv("CDC_VAULT_SECRET_PATH", login)
        monkeypatch.setenv("CDC_POSTGRES_DSN", no_login_dsn)
        resources = {
            **default_resources(),
            "scratch": ScratchStorageResource(uri=str(tmp_path / "dagster-scratch")),
        }
        defs = build_definitions(config, resources)
        (names,) = table_names(config)
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DELETE FROM {}.people WHERE id = %s").format(sql.Identifier(unique_name)),
                (DELETED_IN_TARGET[0],),
            )
        runs = [
            dg.materialize(
                [defs.get_assets_def(names.target_index_key)],
                instance=instance,
                resources=resources,
            )
        ]
        for key in (names.reconciliation_key, names.repair_key):
            for slice_id in names.slices:
                runs.append(
                    dg.materialize(
                        [defs.get_assets_def(key)],
                        partition_key=slice_id,
                        instance=instance,
                        resources=defs.resources,
                    )
                )
        assert all(run.success for run in runs)
        dagster_events = [
            serialize_value(entry) for run in runs for entry in instance.all_logs(run.run_id)
        ]
        assert any("discrepancy_sample" in event for event in dagster_events)
        outputs["dagster event log"] = "\n".join(dagster_events)

        # Connect's REST answers about the sink.
        for endpoint in ("config", "status", "tasks"):
            answer = requests.get(f"{connect_url}/connectors/{sink.name}/{endpoint}", timeout=10)
            answer.raise_for_status()
            outputs[f"GET /connectors/<sink>/{endpoint}"] = answer.text
        expanded = requests.get(
            f"{connect_url}/connectors?expand=info&expand=status", timeout=10
        ).text
        outputs["GET /connectors?expand=info&expand=status"] = expanded
        assert "${vault:" in outputs["GET /connectors/<sink>/config"]

        # Rotation: PostgreSQL first, then Vault, then Connect restarts its tasks.
        rotated = f"pg-pw-{uuid.uuid4().hex}"
        secret_values.append(rotated)
        role = secrets["postgres.user"]
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(rotated)
                )
            )
        vault.secrets.kv.v2.patch(
            path=login.removeprefix(f"{OPENBAO_KV_MOUNT}/data/"),
            secret={"postgres.password": rotated},
            mount_point=OPENBAO_KV_MOUNT,
        )
        restarted = cli(env, "connectors", "restart", "--all", "--sinks-only")
        assert restarted.returncode == 0, restarted.stderr
        assert f"{sink.name}: restarted the connector and 1 task(s)" in restarted.stdout
        outputs["connectors restart --all"] = restarted.stdout + restarted.stderr
        rotated_at = time.time()
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            # Sessions opened with the old password end; the sink must log in again.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
        source.upsert([person(i, "b") for i in range(ROWS, ROWS + 10)], now_us())
        source.flush()
        # Only the new password opens a session for this login: the rows arriving prove it.
        wait_for_rows(postgres_dsn, unique_name, set(range(ROWS, ROWS + 10)))
        client.wait_for_state(sink.name, "RUNNING", timeout_s=30)
        with psycopg.connect(postgres_dsn) as conn:
            (sessions,) = conn.execute(  # type: ignore[misc]
                "SELECT count(*) FROM pg_stat_activity WHERE usename = %s "
                "AND backend_start >= to_timestamp(%s)",
                (role, rotated_at),
            ).fetchone()
        assert sessions >= 1, "the sink wrote without a session opened after the rotation"
        # The CLI takes the new password from Vault, nothing edited: it repairs the row the
        # Dagster run only planned (a dry run).
        again = cli(
            env,
            *("reconcile", f"{unique_name}.people", "--config", str(declaration), "--repair"),
            *("--scratch", str(scratch), "--report", str(tmp_path / "after.json")),
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads((tmp_path / "after.json").read_text())["repaired"]["upserted"] == 1
        outputs["reconcile after the rotation"] = again.stdout + again.stderr

        outputs["Connect worker log"] = connect_log_since(log_offsets)
        for root in (tmp_path,):
            outputs.update(scratch_texts(root))
        assert any(name.endswith(".parquet (rows)") for name in outputs)
        assert any(name.endswith(".sql") for name in outputs)
        for where, text in outputs.items():
            if where == str(declaration):
                continue
            assert_no_secret(where, text, secret_values)
    finally:
        client.delete(sink.name)
        cql_session.execute(f'DROP KEYSPACE IF EXISTS "{unique_name}"')
