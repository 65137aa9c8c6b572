"""Resources: thin, configurable handles on the services, read from the ``CDC_*`` variables.

Each resource builds its client when asked (per call, or per run for the PostgreSQL
pool) with explicit timeouts; nothing connects while the definitions load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import psycopg
from psycopg_pool import ConnectionPool
from pydantic import PrivateAttr

from cdc_pipelines.config import ScyllaConnection
from cdc_pipelines.connect.client import ConnectClient
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.kafka.dlq import DlqReader
from cdc_pipelines.kafka.lag_sampler import LagSampler
from cdc_pipelines.observability.metrics import Gauge, push, push_per_table
from cdc_pipelines.reconcile.scratch import DEFAULT_SCRATCH_DIR
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import (
    DEFAULT_CONNECT_URL,
    DEFAULT_KAFKA_BOOTSTRAP_SERVERS,
    DEFAULT_POSTGRES_DSN,
    DEFAULT_PUSHGATEWAY_URL,
    DEFAULT_SCYLLA_CONTACT_POINTS,
    DEFAULT_SCYLLA_PORT,
    SCYLLA_PASSWORD_KEY,
    SCYLLA_USER_KEY,
    VAULT_SECRET_PATH_ENV,
    ConnectionSettings,
    checked_dsn,
    read_vault_secret,
)

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_S = 600
POOL_MAX_SIZE = 4
KAFKA_TIMEOUT_S = 10.0
CONNECT_REST_TIMEOUT_S = 10.0
CONNECT_REST_RETRIES = 2
SCRATCH_ENV = "CDC_SCRATCH_URI"
LOCAL_SCHEMES = ("", "file")


def env_or_default(name: str, default: str) -> Any:
    """``dg.EnvVar(name)`` when the variable is set, else the library's default.

    An EnvVar is resolved when a run starts and its value never shows in the UI, so
    credentials in a DSN stay out of Dagster's config; unset variables fall back to
    the same defaults the CLI uses.
    """
    return dg.EnvVar(name) if name in os.environ else default


class ScyllaResource(dg.ConfigurableResource):
    """The source cluster (ScyllaDB, or any CQL endpoint); sessions are opened per call."""

    contact_points: str = DEFAULT_SCYLLA_CONTACT_POINTS
    port: int = DEFAULT_SCYLLA_PORT
    vault_secret_path: str = ""
    """A Vault KV secret with ``scylla.user``/``scylla.password`` (CDC_VAULT_SECRET_PATH),
    read at each session when the declaration names no login."""

    def settings(self) -> ConnectionSettings:
        """Where the cluster listens, and its login from Vault when a secret path is set."""
        settings = ConnectionSettings(
            scylla_contact_points=self.contact_point_list(), scylla_port=self.port
        )
        if not self.vault_secret_path:
            return settings
        secret = read_vault_secret(self.vault_secret_path)
        return replace(
            settings,
            scylla_username=secret.get(SCYLLA_USER_KEY) or None,
            scylla_password=secret.get(SCYLLA_PASSWORD_KEY),
        )

    def contact_point_list(self) -> tuple[str, ...]:
        points = tuple(p.strip() for p in self.contact_points.split(",") if p.strip())
        if not points:
            raise ConfigError("CDC_SCYLLA_CONTACT_POINTS is empty; set it to host[,host…]")
        return points

    @contextmanager
    def session(self, connection: ScyllaConnection | None = None) -> Iterator[Any]:
        """A CQL session (tuple rows, declared consistency), shut down on exit."""
        settings = self.settings()
        with cql_session(settings, connection) as session:
            yield session


class PostgresResource(dg.ConfigurableResource):
    """The target database; a small connection pool lives for one run or sensor tick."""

    dsn: str = DEFAULT_POSTGRES_DSN
    vault_secret_path: str = ""
    """A Vault KV secret whose ``postgres.user``/``postgres.password`` replace the DSN's login
    (CDC_VAULT_SECRET_PATH); read when a run or tick first connects, so a rotated password
    needs no change here."""
    connect_timeout_s: int = CONNECT_TIMEOUT_S
    statement_timeout_s: int = STATEMENT_TIMEOUT_S
    pool_max_size: int = POOL_MAX_SIZE

    _pool: ConnectionPool[Any] | None = PrivateAttr(default=None)

    def resolved_dsn(self) -> str:
        """The DSN to connect with: the configured one, its login from Vault when set."""
        dsn = checked_dsn(self.dsn)
        if not self.vault_secret_path:
            return dsn
        return (
            ConnectionSettings(postgres_dsn=dsn)
            .with_vault_logins(self.vault_secret_path)
            .postgres_dsn
        )

    def _kwargs(self) -> dict[str, Any]:
        return {
            "connect_timeout": self.connect_timeout_s,
            "options": f"-c statement_timeout={self.statement_timeout_s * 1000}",
            "autocommit": True,
        }

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection with connect and statement timeouts."""
        if self._pool is None:
            self._pool = ConnectionPool(
                self.resolved_dsn(),
                min_size=0,
                max_size=self.pool_max_size,
                kwargs=self._kwargs(),
                timeout=float(self.connect_timeout_s),
                open=True,
            )
        with self._pool.connection(timeout=float(self.connect_timeout_s)) as conn:
            yield conn

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster: lag sampling and DLQ reading, one client per call."""

    bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    timeout_s: float = KAFKA_TIMEOUT_S

    def lag_sampler(self, timeout_s: float | None = None) -> LagSampler:
        return LagSampler(self.bootstrap_servers, timeout_s or self.timeout_s)

    def dlq_reader(self, timeout_s: float | None = None) -> DlqReader:
        return DlqReader(self.bootstrap_servers, timeout_s or self.timeout_s)


class KafkaConnectResource(dg.ConfigurableResource):
    """The Kafka Connect cluster's REST API."""

    url: str = DEFAULT_CONNECT_URL
    timeout_s: float = CONNECT_REST_TIMEOUT_S
    retries: int = CONNECT_REST_RETRIES

    def client(self, timeout_s: float | None = None, retries: int | None = None) -> ConnectClient:
        """A new client; sensors pass a short timeout and no retries to stay within a tick."""
        return ConnectClient(
            self.url,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            retries=self.retries if retries is None else retries,
        )


class ScratchStorageResource(dg.ConfigurableResource):
    """Where target indexes, slice results and reports are written (a local path or file:// URI)."""

    uri: str = str(DEFAULT_SCRATCH_DIR)

    def root(self) -> Path:
        parts = urlsplit(self.uri)
        if parts.scheme not in LOCAL_SCHEMES:
            raise ConfigError(
                f"{SCRATCH_ENV}={self.uri!r}: the reconciliation engine writes local files; "
                "use a local directory or a file:// URI (mount object storage if needed)"
            )
        path = Path(parts.path if parts.scheme == "file" else self.uri).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path


class PushgatewayResource(dg.ConfigurableResource):
    """The Prometheus Pushgateway that batch work pushes its gauges to."""

    url: str = DEFAULT_PUSHGATEWAY_URL

    def push(
        self, job: str, gauges: Sequence[Gauge], grouping: Mapping[str, str] | None = None
    ) -> None:
        push(self.url, job, gauges, grouping)

    def push_per_table(self, job: str, gauges: Sequence[Gauge], also: Sequence[str] = ()) -> None:
        """One group per ``table`` label of ``gauges`` (``job``/``table``, and ``also``)."""
        push_per_table(self.url, job, gauges, also)


def connection_settings(
    scylla: ScyllaResource, postgres: PostgresResource, kafka: KafkaResource
) -> ConnectionSettings:
    """Where the reconciliation steps find the source, the target and the topic's offsets,
    taken from the resources a run was given (never from the library's defaults)."""
    return replace(
        scylla.settings(),
        postgres_dsn=postgres.resolved_dsn(),
        kafka_bootstrap_servers=kafka.bootstrap_servers,
    )


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Every resource bound to its ``CDC_*`` variable (or the library default when unset)."""
    return {
        "scylla": ScyllaResource(
            contact_points=env_or_default(
                "CDC_SCYLLA_CONTACT_POINTS", DEFAULT_SCYLLA_CONTACT_POINTS
            ),
            port=dg.EnvVar.int("CDC_SCYLLA_PORT")
            if "CDC_SCYLLA_PORT" in os.environ
            else DEFAULT_SCYLLA_PORT,
            vault_secret_path=env_or_default(VAULT_SECRET_PATH_ENV, ""),
        ),
        "postgres": PostgresResource(
            dsn=env_or_default("CDC_POSTGRES_DSN", DEFAULT_POSTGRES_DSN),
            vault_secret_path=env_or_default(VAULT_SECRET_PATH_ENV, ""),
        ),
        "kafka": KafkaResource(
            bootstrap_servers=env_or_default(
                "CDC_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA_BOOTSTRAP_SERVERS
            )
        ),
        "kafka_connect": KafkaConnectResource(
            url=env_or_default("CDC_CONNECT_URL", DEFAULT_CONNECT_URL)
        ),
        "scratch": ScratchStorageResource(
            uri=env_or_default(SCRATCH_ENV, str(DEFAULT_SCRATCH_DIR))
        ),
        "pushgateway": PushgatewayResource(
            url=env_or_default("CDC_PUSHGATEWAY_URL", DEFAULT_PUSHGATEWAY_URL)
        ),
    }
