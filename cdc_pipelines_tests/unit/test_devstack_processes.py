"""The devstack signals only processes it started, and stops them for good."""

from __future__ import annotations

import os
import sys

from cdc_pipelines.devstack import processes
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.devstack.stack import stack_env


def test_spawned_process_is_found_by_pid_file_and_stopped(tmp_path):
    marker = str(tmp_path / "svc")
    pid_file = tmp_path / "run" / "svc.pid"
    pid = processes.spawn(
        [sys.executable, "-c", "import time; time.sleep(600)", marker],
        tmp_path / "logs" / "svc.log",
        pid_file,
    )
    assert processes.running_pid(pid_file, marker) == pid
    assert processes.stop_process_group(pid, marker, grace_s=10)
    assert processes.running_pid(pid_file, marker) is None
    assert not os.path.exists(f"/proc/{pid}") or processes.command_line(pid) == ""


def test_a_process_that_ignores_sigterm_is_killed(tmp_path):
    marker = str(tmp_path / "stubborn")
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    pid = processes.spawn(
        [sys.executable, "-c", code, marker], tmp_path / "s.log", tmp_path / "s.pid"
    )
    assert processes.stop_process_group(pid, marker, grace_s=1)
    assert not processes.is_ours(pid, marker)


def test_a_foreign_process_is_never_ours(tmp_path):
    # PID 1 and this test process are alive but their command lines do not name the stack.
    assert not processes.is_ours(1, str(tmp_path))
    assert not processes.is_ours(os.getpid(), str(tmp_path / "state"))
    assert processes.stop_process_group(os.getpid(), str(tmp_path / "state"))  # no-op, still alive


def test_stale_pid_file_is_ignored(tmp_path):
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("999999999\n")
    assert processes.running_pid(pid_file, str(tmp_path)) is None
    pid_file.write_text("garbage")
    assert processes.read_pid(pid_file) is None


def test_stack_env_names_every_connection_variable(tmp_path):
    env = stack_env(StackLayout(state=tmp_path / "state", cache=tmp_path / "cache"))
    for name in (
        "CDC_SCYLLA_CONTACT_POINTS",
        "CDC_SCYLLA_PORT",
        "CDC_POSTGRES_DSN",
        "CDC_KAFKA_BOOTSTRAP_SERVERS",
        "CDC_CONNECT_URL",
        "CDC_PUSHGATEWAY_URL",
    ):
        assert env[name]
    assert env["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert "CDC_CONNECT_SECRETS_FILE" not in env  # the connectors' secrets are in OpenBao only
    assert env["CDC_CONNECT_VAULT_PATH"] == "secret/data/cdc/connect"
