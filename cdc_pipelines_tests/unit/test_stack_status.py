"""``stack status`` says a killed service is down with its process gone, in one clean line."""

from __future__ import annotations

import signal
import socket
import sys

import pytest
import requests

from cdc_pipelines.commands.stack_cmd import print_status
from cdc_pipelines.devstack import processes, stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.devstack.services import Health, Service, request_failure


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def refused() -> str:
    url = f"http://127.0.0.1:{closed_port()}/-/ready"
    try:
        requests.get(url, timeout=2)
    except requests.RequestException as exc:
        return request_failure(url, exc)
    raise AssertionError(f"{url} answered")


def test_a_refused_probe_is_one_clean_line() -> None:
    detail = refused()
    assert detail.endswith("failed: connection refused"), detail
    assert "\n" not in detail
    for noise in ("urllib3", "HTTPConnectionPool", "Max retries", "object at 0x"):
        assert noise not in detail


class Killed(Service):
    """A service the stack started whose process was then killed."""

    name = "killed"

    def start(self) -> None:
        raise AssertionError("not started here")

    def probe(self) -> Health:
        return Health(self.name, False, refused())


def test_a_killed_service_is_down_with_its_process_gone(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = StackLayout(state=tmp_path / "state", cache=tmp_path / "cache")
    service = Killed(layout)
    pid = processes.spawn(
        [sys.executable, "-c", "import time; time.sleep(600)", service.marker],
        tmp_path / "killed.log",
        layout.pid_file(service.name),
    )
    processes._signal_group(pid, signal.SIGKILL)
    processes._reap(pid)
    monkeypatch.setattr(stack, "all_services", lambda _: [service])

    (status,) = stack.status(layout)
    assert status.process_gone and not status.started_by_stack
    print_status([status])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.split()[:2] == ["killed", "DOWN"]
    assert f"process gone (pid {pid})" in line
    assert "not started by the stack" not in line
    assert line.endswith("failed: connection refused")


def test_a_service_the_stack_never_started_is_labelled_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_status(
        [
            stack.ServiceStatus(Health("outside", True, "ready"), None),
            stack.ServiceStatus(Health("absent", False, "GET x failed: connection refused"), None),
        ]
    )
    outside, absent = capsys.readouterr().out.splitlines()
    assert "not started by the stack" in outside
    assert "not running" in absent and "not started by the stack" not in absent
