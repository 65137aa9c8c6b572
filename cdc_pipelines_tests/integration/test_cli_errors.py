"""The command's failures: a clear message naming the thing and the fix, and the exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "cdc_pipelines.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_malformed_declaration_exits_2_naming_file_field_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(
        "tables:\n  - source: shop.orders\n    target: public.orders\n"
        "    partition_key: [id]\n    columns: {id: int, total: decimall}\n"
    )
    result = run("config", "validate", "--config", str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert "tables[0](shop.orders)" in result.stderr and "'decimall'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_declaration_says_how_to_point_at_one(tmp_path: Path) -> None:
    result = run("config", "validate", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "--config" in result.stderr and "CDC_PIPELINE_CONFIG" in result.stderr


def test_connect_down_exits_3_naming_the_endpoint(settings) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = run(
        "connectors",
        "status",
        "--sinks-only",
        "--config",
        "pipeline.yaml",
        env={"CDC_CONNECT_URL": url, "CDC_CONNECT_SECRETS_FILE": "/tmp/s.properties"},
    )
    assert result.returncode == 3
    assert url in result.stderr and "CDC_CONNECT_URL" in result.stderr


def test_postgres_down_exits_3_naming_the_setting(settings) -> None:
    dsn = f"postgresql://cdc@127.0.0.1:{closed_port()}/cdc"
    result = run("ddl", "plan", "--config", "pipeline.yaml", env={"CDC_POSTGRES_DSN": dsn})
    assert result.returncode == 3
    assert "CDC_POSTGRES_DSN" in result.stderr


def test_stack_status_reports_every_service_healthy(settings) -> None:
    result = run("stack", "status")
    assert result.returncode == 0, result.stdout
    services = [line.split()[0] for line in result.stdout.splitlines()]
    assert services == [
        "postgres",
        "cassandra",
        "kafka",
        "connect",
        "pushgateway",
        "prometheus",
        "openbao",
    ]
    assert all(" healthy " in line for line in result.stdout.splitlines())


def test_usage_errors_exit_2() -> None:
    result = run("reconcile")
    assert result.returncode == 2
    assert "KEYSPACE.TABLE" in result.stderr


PASSWORD = "Sekr3t-pw-42"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://cdc:{PASSWORD}@[::1/cdc",  # broken IPv6 host
        f"cdc:{PASSWORD}@127.0.0.1:5432/cdc",  # no scheme
        f"host=127.0.0.1 password={PASSWORD} dbname",  # key without a value
        f"postgresql://cdc:{PASSWORD}@127.0.0.1:{closed_port()}/cdc",  # valid, server down
    ],
    ids=["broken-ipv6-host", "no-scheme", "broken-conninfo", "server-down"],
)
@pytest.mark.parametrize(
    "command", [("ddl", "plan"), ("reconcile", "demo.orders")], ids=["ddl-plan", "reconcile"]
)
def test_a_connection_string_password_never_reaches_the_output(
    tmp_path: Path, dsn: str, command: tuple[str, ...]
) -> None:
    secrets = tmp_path / "postgres.properties"
    secrets.write_text("mask.salt=pepper-for-the-test\n")
    result = run(
        *command,
        "--config",
        "pipeline.yaml",
        *(("--scratch", str(tmp_path / "scratch")) if command[0] == "reconcile" else ()),
        env={
            "CDC_POSTGRES_DSN": dsn,
            # The salt from a file (the opt-in provider): this test needs no Vault.
            "CDC_CONNECT_SECRETS_PROVIDER": "file",
            "CDC_CONNECT_SECRETS_FILE": str(secrets),
        },
    )
    output = result.stdout + result.stderr
    assert result.returncode in (2, 3), output
    assert PASSWORD not in output
    assert "CDC_POSTGRES_DSN" in output and "Traceback" not in output
