"""Bring the devstack up, report its health, print its settings, and take it down.

``up`` is idempotent: it installs what is missing, starts only services that do
not answer, waits for each to pass a real readiness probe (a CQL query, a Kafka
metadata call, Connect's plugin list, ``SELECT 1``, ``/-/ready``, OpenBao's
``sys/health`` once it is unsealed) and fails with the service's log tail when one
does not come up in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cdc_pipelines.devstack.layout import (
    CONNECT_PORT,
    CQL_PORT,
    DAGSTER_DB,
    KAFKA_PORT,
    LOOPBACK,
    OPENBAO_KV_MOUNT,
    OPENBAO_PORT,
    OPENBAO_SECRET_PATH,
    POSTGRES_DB,
    POSTGRES_PASSWORD,
    POSTGRES_PORT,
    POSTGRES_USER,
    PROMETHEUS_PORT,
    PUSHGATEWAY_PORT,
    StackLayout,
)
from cdc_pipelines.devstack.processes import read_pid
from cdc_pipelines.devstack.services import Health, OpenBao, Service, all_services
from cdc_pipelines.errors import DevstackError

WAIT_POLL_S = 1.0
PROGRESS_EVERY_S = 10.0

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    health: Health
    pid: int | None
    recorded_pid: int | None = None  # the pid the stack wrote when it started the service

    @property
    def started_by_stack(self) -> bool:
        return self.pid is not None

    @property
    def process_gone(self) -> bool:
        """The stack started the service, but its process is no longer running (killed,
        crashed)."""
        return self.pid is None and self.recorded_pid is not None


def stack_env(layout: StackLayout) -> dict[str, str]:
    """The connection settings of the devstack, as environment variables.

    VAULT_TOKEN (OpenBao's root token) is there once ``up`` has initialised OpenBao.
    """
    env = {
        "CDC_SCYLLA_CONTACT_POINTS": LOOPBACK,
        "CDC_SCYLLA_PORT": str(CQL_PORT),
        "CDC_POSTGRES_DSN": (
            f"postgresql://{POSTGRES_USER}:{POSTGRES_PASSWORD}@{LOOPBACK}:{POSTGRES_PORT}/{POSTGRES_DB}"
        ),
        "CDC_KAFKA_BOOTSTRAP_SERVERS": f"{LOOPBACK}:{KAFKA_PORT}",
        "CDC_CONNECT_URL": f"http://{LOOPBACK}:{CONNECT_PORT}",
        "CDC_PUSHGATEWAY_URL": f"http://{LOOPBACK}:{PUSHGATEWAY_PORT}",
        "CDC_PROMETHEUS_URL": f"http://{LOOPBACK}:{PROMETHEUS_PORT}",
        # Cassandra has no CDC log: the canary publishes its row's change event itself
        # (pipeline.yaml's canary reads this as emulate_cdc).
        "CDC_EMULATED_CDC": "true",
        "VAULT_ADDR": f"http://{LOOPBACK}:{OPENBAO_PORT}",
        # The shipped pipeline.yaml's connectors resolve their secrets from OpenBao.
        "CDC_CONNECT_SECRETS_PROVIDER": "vault",
        "CDC_CONNECT_VAULT_PATH": f"{OPENBAO_KV_MOUNT}/data/{OPENBAO_SECRET_PATH}",
        "DAGSTER_PG_HOST": LOOPBACK,
        "DAGSTER_PG_PORT": str(POSTGRES_PORT),
        "DAGSTER_PG_USER": POSTGRES_USER,
        "DAGSTER_PG_PASSWORD": POSTGRES_PASSWORD,
        "DAGSTER_PG_DB": DAGSTER_DB,
        # psycopg2 on purpose: with SQLAlchemy 2.1 a bare postgresql:// URL selects
        # psycopg 3, on which dagster-postgres's NOTIFY statement fails.
        "DAGSTER_PG_URL": (
            f"postgresql+psycopg2://{POSTGRES_USER}:{POSTGRES_PASSWORD}@{LOOPBACK}:{POSTGRES_PORT}/{DAGSTER_DB}"
        ),
    }
    token = OpenBao(layout).root_token()
    if token is not None:
        env["VAULT_TOKEN"] = token
    return env


def status(layout: StackLayout) -> list[ServiceStatus]:
    return [
        ServiceStatus(service.probe(), service.pid(), read_pid(layout.pid_file(service.name)))
        for service in all_services(layout)
    ]


def up(layout: StackLayout, report: Reporter = print) -> list[ServiceStatus]:
    services = all_services(layout)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    for service in services:
        report(f"[{service.name}] checking installation")
        service.install()
        service.prepare()
    ready: dict[str, Health] = {}
    pending = list(services)
    waiting: dict[str, float] = {}
    last_report: dict[str, float] = {}
    while pending:
        progressed = False
        for service in list(pending):
            if any(dep not in ready for dep in service.depends_on):
                continue
            if service.name not in waiting:
                health = service.ready_check()
                if health.healthy:
                    _mark_ready(service, health, ready, pending, report, started=False)
                    progressed = True
                    continue
                if service.pid() is None:
                    report(f"[{service.name}] starting")
                    service.start()
                else:
                    report(f"[{service.name}] already running (pid {service.pid()}), waiting")
                waiting[service.name] = time.monotonic()
                progressed = True
        for service in list(pending):
            started_at = waiting.get(service.name)
            if started_at is None:
                continue
            health = service.ready_check()
            if health.healthy:
                _mark_ready(service, health, ready, pending, report, started=True)
                progressed = True
                continue
            elapsed = time.monotonic() - started_at
            if service.pid() is None and elapsed > 5:
                raise DevstackError(
                    f"{service.name} exited during start-up ({health.detail}); "
                    f"fix the cause below and rerun 'cdc-pipelines stack up'\n{service.log_tail()}"
                )
            if elapsed > service.start_timeout_s:
                raise DevstackError(
                    f"{service.name} did not become ready within {service.start_timeout_s:.0f}s "
                    f"({health.detail}); see {service.log_file}\n{service.log_tail()}"
                )
            if time.monotonic() - last_report.get(service.name, started_at) >= PROGRESS_EVERY_S:
                last_report[service.name] = time.monotonic()
                report(f"[{service.name}] waiting ({elapsed:.0f}s): {health.detail}")
        if pending and not progressed:
            time.sleep(WAIT_POLL_S)
    return status(layout)


def _mark_ready(
    service: Service,
    health: Health,
    ready: dict[str, Health],
    pending: list[Service],
    report: Reporter,
    started: bool,
) -> None:
    service.after_ready()
    ready[service.name] = health
    pending.remove(service)
    verb = "ready" if started else "already up"
    report(f"[{service.name}] {verb}: {health.detail}")


def down(layout: StackLayout, report: Reporter = print) -> bool:
    """Stop the processes the stack started (by PID), dependents first. True when all stopped."""
    all_stopped = True
    for service in reversed(all_services(layout)):
        pid = service.pid()
        if pid is None:
            report(f"[{service.name}] not running")
            continue
        report(f"[{service.name}] stopping pid {pid}")
        if service.stop():
            report(f"[{service.name}] stopped")
        else:
            all_stopped = False
            report(f"[{service.name}] did not stop; pid {pid} is still alive")
    return all_stopped
