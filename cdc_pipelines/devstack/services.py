"""The devstack services: how each is installed, prepared, started, probed and stopped."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests

from cdc_pipelines.devstack import configs, install, processes
from cdc_pipelines.devstack.layout import (
    CONNECT_PORT,
    CQL_PORT,
    DAGSTER_DB,
    JAVA_HOME_ENV,
    KAFKA_PORT,
    LOOPBACK,
    OPENBAO_APPROLE,
    OPENBAO_CONNECT_POLICY,
    OPENBAO_CONNECT_TOKEN_FILE,
    OPENBAO_CONNECT_TOKEN_TTL,
    OPENBAO_KV_MOUNT,
    OPENBAO_POLICY,
    OPENBAO_PORT,
    OPENBAO_SECRET_PATH,
    POSTGRES_BIN,
    POSTGRES_DB,
    POSTGRES_PASSWORD,
    POSTGRES_PASSWORD_GROUP,
    POSTGRES_PORT,
    POSTGRES_USER,
    PROMETHEUS_BIN,
    PROMETHEUS_PORT,
    PUSHGATEWAY_BIN,
    PUSHGATEWAY_PORT,
    SCYLLA_PASSWORD,
    SCYLLA_USER,
    StackLayout,
)
from cdc_pipelines.errors import DevstackError

PROBE_TIMEOUT_S = 3.0
JDBC_SINK_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
TRANSFORM_CLASS = "io.cdcpipelines.connect.ComplexFieldsToJson"


# The OS's reason inside a requests/urllib3 connection error: "[Errno 111] Connection refused".
_OS_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def request_failure(url: str, exc: Exception) -> str:
    """One clean line for a failed probe request (``GET <url> failed: connection refused``),
    not urllib3's nested exception reprs."""
    if isinstance(exc, requests.Timeout):
        reason = f"no answer within {PROBE_TIMEOUT_S:g} s"
    elif isinstance(exc, requests.ConnectionError):
        found = _OS_REASON.search(str(exc))
        reason = found.group(1).strip().lower() if found else "cannot connect"
    else:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
    return f"GET {url} failed: {reason}"


@dataclass(frozen=True)
class Health:
    """The outcome of one readiness probe."""

    service: str
    healthy: bool
    detail: str


class Service(ABC):
    """A devstack service. Subclasses say how to install, prepare, start and probe it."""

    name: str
    start_timeout_s: float = 120.0
    depends_on: tuple[str, ...] = ()

    def __init__(self, layout: StackLayout) -> None:
        self.layout = layout

    @property
    def home(self) -> Path:
        return self.layout.service_dir(self.name)

    @property
    def log_file(self) -> Path:
        return self.layout.log_file(self.name)

    @property
    def marker(self) -> str:
        """A string every command line of this service contains (its state directory)."""
        return str(self.home)

    def install(self) -> None:
        """Fetch binaries or jars (idempotent)."""

    def prepare(self) -> None:
        """Write configs and initialize data directories (idempotent)."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def probe(self) -> Health: ...

    def ready_check(self) -> Health:
        """The probe ``up`` waits on; it may finish a start-up the service cannot finish
        alone (OpenBao's unseal). ``status`` only probes."""
        return self.probe()

    def after_ready(self) -> None:
        """One-time bootstrap once the service answers (idempotent)."""

    def pid(self) -> int | None:
        return processes.running_pid(self.layout.pid_file(self.name), self.marker)

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            self.layout.pid_file(self.name).unlink(missing_ok=True)
            return True
        stopped = processes.stop_process_group(pid, self.marker)
        if stopped:
            self.layout.pid_file(self.name).unlink(missing_ok=True)
        return stopped

    def log_tail(self, lines: int = 30) -> str:
        candidates = [self.log_file, *sorted(self.layout.logs.glob(f"{self.name}*.log"))]
        for path in candidates:
            if path.exists() and path.stat().st_size:
                text = path.read_text(errors="replace").splitlines()
                return f"--- last {lines} lines of {path} ---\n" + "\n".join(text[-lines:])
        return f"(no log output in {self.log_file})"


def _java() -> str:
    java_home = os.environ.get(JAVA_HOME_ENV)
    if java_home:
        return str(Path(java_home) / "bin/java")
    java = shutil.which("java")
    if java is None:
        raise DevstackError("java is not on PATH; install a JDK 17 or set CDC_JAVA_HOME")
    return java


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; run its tools as the 'postgres' account.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class Postgres(Service):
    name = "postgres"
    start_timeout_s = 60.0

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "socket"

    def install(self) -> None:
        if not (POSTGRES_BIN / "postgres").exists():
            raise DevstackError(
                f"PostgreSQL binaries not found in {POSTGRES_BIN}; install Debian's "
                "postgresql-15 or set CDC_POSTGRES_BIN"
            )

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.data, ignore_errors=True)
            result = subprocess.run(
                _as_postgres_user(
                    [
                        str(POSTGRES_BIN / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise DevstackError(f"initdb failed in {self.data}: {result.stderr.strip()}")
        conf = self.data / "postgresql.conf"
        conf.write_text(configs.postgres_conf(self.socket_dir))
        hba = self.data / "pg_hba.conf"
        current = hba.read_text()
        if configs.postgres_hba(current) != current:
            hba.write_text(configs.postgres_hba(current))
        for path in (conf, hba):
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")

    def start(self) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.log_file.touch()
            shutil.chown(self.log_file, "postgres", "postgres")
        command = [
            str(POSTGRES_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_file),
            "start",
        ]
        result = subprocess.run(
            _as_postgres_user(command), capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise DevstackError(f"pg_ctl start failed: {result.stderr.strip()}\n{self.log_tail()}")

    def pid(self) -> int | None:
        pid = processes.read_pid(self.data / "postmaster.pid")
        return pid if processes.is_ours(pid, "postgres") else None

    def stop(self) -> bool:
        if self.pid() is None:
            return True
        subprocess.run(
            _as_postgres_user(
                [str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            capture_output=True,
            check=False,
        )
        return self.pid() is None

    def _connect(self, user: str, dbname: str) -> object:
        import psycopg

        return psycopg.connect(
            host=LOOPBACK,
            port=POSTGRES_PORT,
            user=user,
            dbname=dbname,
            connect_timeout=int(PROBE_TIMEOUT_S),
            autocommit=True,
        )

    def probe(self) -> Health:
        import psycopg

        try:
            with psycopg.connect(
                host=LOOPBACK,
                port=POSTGRES_PORT,
                user="postgres",
                dbname="postgres",
                connect_timeout=int(PROBE_TIMEOUT_S),
            ) as conn:
                version = conn.execute("SELECT 1, current_setting('server_version')").fetchone()
        except psycopg.Error as exc:
            return Health(self.name, False, f"SELECT 1 failed: {str(exc).strip()}")
        server_version = version[1] if version else "?"
        return Health(self.name, True, f"PostgreSQL {server_version} on {LOOPBACK}:{POSTGRES_PORT}")

    def after_ready(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=LOOPBACK, port=POSTGRES_PORT, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (POSTGRES_USER,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                        sql.Identifier(POSTGRES_USER), sql.Literal(POSTGRES_PASSWORD)
                    )
                )
            group = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (POSTGRES_PASSWORD_GROUP,)
            ).fetchone()
            if not group:
                conn.execute(
                    sql.SQL("CREATE ROLE {} NOLOGIN").format(
                        sql.Identifier(POSTGRES_PASSWORD_GROUP)
                    )
                )
            # pg_hba.conf may have gained the group's line since the server started.
            conn.execute("SELECT pg_reload_conf()")
            for database in (POSTGRES_DB, DAGSTER_DB):
                found = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if not found:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            sql.Identifier(database), sql.Identifier(POSTGRES_USER)
                        )
                    )


CASSANDRA_JVM17_FLAGS = (
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
)


class Cassandra(Service):
    """Apache Cassandra 5: the CQL endpoint (same protocol and Murmur3 ring as ScyllaDB)."""

    name = "cassandra"
    start_timeout_s = 180.0
    heap = "1G"

    def install(self) -> None:
        install.ensure_jars(self.layout, install.JAR_SETS[2])

    def prepare(self) -> None:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "conf"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        (self.home / "conf/cassandra.yaml").write_text(configs.cassandra_yaml(self.home))
        (self.home / "conf/logback.xml").write_text(configs.cassandra_logback(self.log_file))

    def start(self) -> None:
        lib = self.layout.lib("cassandra")
        jamm = sorted(lib.glob("jamm-*.jar"))
        command = [
            _java(),
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-Xss512k",
            "-XX:+UseG1GC",
            "-XX:+HeapDumpOnOutOfMemoryError",
            *CASSANDRA_JVM17_FLAGS,
            *([f"-javaagent:{jamm[0]}"] if jamm else []),
            "-Djdk.attach.allowAttachSelf=true",
            "-Dchronicle.analytics.disable=true",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dcassandra.config=file://{self.home}/conf/cassandra.yaml",
            f"-Dcassandra.storagedir={self.home}",
            f"-Dcassandra.logdir={self.layout.logs}",
            f"-Dlogback.configurationFile={self.home}/conf/logback.xml",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.jmx.local.port=7199",
            "-cp",
            f"{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        processes.spawn(
            command,
            self.layout.logs / "cassandra.out",
            self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def probe(self) -> Health:
        from cassandra.cluster import Cluster, NoHostAvailable

        cluster = Cluster(
            [LOOPBACK],
            port=CQL_PORT,
            connect_timeout=PROBE_TIMEOUT_S,
            control_connection_timeout=PROBE_TIMEOUT_S,
            protocol_version=5,
        )
        try:
            session = cluster.connect()
            row = session.execute(
                "SELECT release_version, partitioner FROM system.local", timeout=PROBE_TIMEOUT_S
            ).one()
        except (NoHostAvailable, OSError, Exception) as exc:  # driver raises many types
            return Health(self.name, False, f"CQL query failed: {exc}")
        finally:
            cluster.shutdown()
        partitioner = str(row.partitioner).rsplit(".", 1)[-1]
        return Health(
            self.name,
            True,
            f"Cassandra {row.release_version} ({partitioner}) on {LOOPBACK}:{CQL_PORT}",
        )


KAFKA_HEAP = "512m"


class Kafka(Service):
    """Apache Kafka in KRaft mode: one broker that is its own controller."""

    name = "kafka"
    start_timeout_s = 90.0

    def install(self) -> None:
        install.ensure_jars(self.layout, install.JAR_SETS[0])

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        properties = self.home / "server.properties"
        properties.write_text(configs.kafka_server_properties(self.home))
        (self.home / "log4j2.xml").write_text(configs.log4j2_xml(self.log_file))
        if not (self.home / "data/meta.properties").exists():
            result = subprocess.run(
                [
                    _java(),
                    "-cp",
                    f"{self.layout.lib('kafka')}/*",
                    f"-Dlog4j2.configurationFile={self.home}/log4j2.xml",
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    configs.kafka_cluster_id(),
                    "-c",
                    str(properties),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise DevstackError(
                    f"formatting Kafka storage in {self.home / 'data'} failed: "
                    f"{(result.stdout + result.stderr).strip()[-1500:]}"
                )

    def start(self) -> None:
        command = [
            _java(),
            f"-Xms{KAFKA_HEAP}",
            f"-Xmx{KAFKA_HEAP}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home}/log4j2.xml",
            f"-Dkafka.logs.dir={self.layout.logs}",
            "-cp",
            f"{self.layout.lib('kafka')}/*",
            "kafka.Kafka",
            str(self.home / "server.properties"),
        ]
        processes.spawn(
            command, self.layout.logs / "kafka.out", self.layout.pid_file(self.name), cwd=self.home
        )

    def probe(self) -> Health:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        # log_level 0: librdkafka would otherwise print connection-refused chatter.
        admin = AdminClient({"bootstrap.servers": f"{LOOPBACK}:{KAFKA_PORT}", "log_level": 0})
        try:
            metadata = admin.list_topics(timeout=PROBE_TIMEOUT_S)
        except KafkaException as exc:
            return Health(self.name, False, f"metadata request failed: {exc}")
        return Health(
            self.name,
            True,
            f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s) on "
            f"{LOOPBACK}:{KAFKA_PORT}",
        )


CONNECT_HEAP = "768m"


class Connect(Service):
    """A Kafka Connect distributed worker with the Debezium JDBC sink on its plugin path."""

    name = "connect"
    start_timeout_s = 150.0
    depends_on = ("kafka",)

    def install(self) -> None:
        install.ensure_jars(self.layout, install.JAR_SETS[1])
        install.ensure_jars(self.layout, install.JAR_SETS[3])
        install.ensure_transforms(self.layout)

    def prepare(self) -> None:
        # Secrets live in OpenBao only: the secrets file earlier versions wrote is removed.
        shutil.rmtree(self.home / "secrets", ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "worker.properties").write_text(
            configs.connect_worker_properties(
                self.layout.plugin_path,
                self.layout.service_dir("openbao") / OPENBAO_CONNECT_TOKEN_FILE,
            )
        )
        (self.home / "log4j2.xml").write_text(configs.log4j2_xml(self.log_file))

    @property
    def started_with_file(self) -> Path:
        """The digest of the worker configuration and plugins the running worker started with."""
        return self.home / "started-with.sha256"

    def config_digest(self) -> str:
        """What a running worker must be restarted for: its properties and plugin jars."""
        parts = [self.home / "worker.properties", *sorted(self.layout.plugin_path.rglob("*.jar"))]
        digest = hashlib.sha256()
        for path in parts:
            digest.update(str(path).encode())
            digest.update(path.read_bytes() if path.name.endswith(".properties") else b"")
            digest.update(str(path.stat().st_size).encode() if path.exists() else b"-")
        for marker in sorted(self.layout.plugin_path.rglob(install.MARKER)):
            digest.update(marker.read_bytes())
        return digest.hexdigest()

    def ready_check(self) -> Health:
        """A worker the stack started with another configuration or other plugins (an older
        checkout: no Vault provider, an older cdc-transforms) is stopped, so ``up`` starts it
        again with the current ones; connectors resume from their stored configs and offsets."""
        recorded = self.started_with_file
        if self.pid() is not None:
            started_with = recorded.read_text().strip() if recorded.exists() else ""
            if started_with != self.config_digest():
                self.stop()
        return self.probe()

    def start(self) -> None:
        self.started_with_file.write_text(self.config_digest() + "\n")
        command = [
            _java(),
            f"-Xms{CONNECT_HEAP}",
            f"-Xmx{CONNECT_HEAP}",
            "-XX:+UseG1GC",
            # The JDBC sink binds timestamps as local date-times of the JVM's zone.
            "-Duser.timezone=UTC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home}/log4j2.xml",
            f"-Dkafka.logs.dir={self.layout.logs}",
            "-cp",
            f"{self.layout.lib('connect')}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(self.home / "worker.properties"),
        ]
        processes.spawn(
            command,
            self.layout.logs / "connect.out",
            self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def probe(self) -> Health:
        url = f"http://{LOOPBACK}:{CONNECT_PORT}/connector-plugins?connectorsOnly=false"
        try:
            response = requests.get(url, timeout=PROBE_TIMEOUT_S)
            response.raise_for_status()
            plugins = {p["class"]: p.get("type", "") for p in response.json()}
        except (requests.RequestException, ValueError, KeyError) as exc:
            return Health(self.name, False, request_failure(url, exc))
        missing = [c for c in (JDBC_SINK_CLASS, TRANSFORM_CLASS) if c not in plugins]
        if missing:
            return Health(self.name, False, f"plugins {missing} are not on the plugin path")
        connectors = sum(1 for kind in plugins.values() if kind in ("sink", "source"))
        return Health(
            self.name,
            True,
            f"{connectors} connector plugin(s) incl. the JDBC sink and cdc-transforms "
            f"on port {CONNECT_PORT}",
        )


class Pushgateway(Service):
    name = "pushgateway"
    start_timeout_s = 30.0

    def install(self) -> None:
        install.ensure_pushgateway()

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        processes.spawn(
            [
                str(PUSHGATEWAY_BIN),
                f"--web.listen-address={LOOPBACK}:{PUSHGATEWAY_PORT}",
                # In the state directory, which also marks the process as the stack's.
                f"--persistence.file={self.home / 'metrics.store'}",
            ],
            self.log_file,
            self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def probe(self) -> Health:
        return ready_probe(self.name, f"http://{LOOPBACK}:{PUSHGATEWAY_PORT}")


def ready_probe(name: str, base_url: str) -> Health:
    """Healthy when ``GET <base_url>/-/ready`` answers 200 (Prometheus and its Pushgateway)."""
    url = f"{base_url}/-/ready"
    try:
        response = requests.get(url, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as exc:
        return Health(name, False, request_failure(url, exc))
    if response.status_code != 200:
        return Health(name, False, f"GET {url} answered {response.status_code}")
    return Health(name, True, f"ready on {base_url.removeprefix('http://')}")


RULES_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus" / "rules"


class Prometheus(Service):
    """Debian's Prometheus scraping the Pushgateway every 5 s, with the repository's
    alert rules (``docker/prometheus/rules/*.yml``) when there are any."""

    name = "prometheus"
    start_timeout_s = 60.0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{PROMETHEUS_PORT}"

    def install(self) -> None:
        install.ensure_prometheus()

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        rules = sorted(RULES_DIR.glob("*.yml")) if RULES_DIR.is_dir() else []
        (self.home / "prometheus.yml").write_text(configs.prometheus_yml(rules))

    def start(self) -> None:
        processes.spawn(
            [
                str(PROMETHEUS_BIN),
                f"--config.file={self.home / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.home / 'data'}",
                "--storage.tsdb.retention.time=7d",
                f"--web.listen-address={LOOPBACK}:{PROMETHEUS_PORT}",
                # lets 'stack up' apply a rewritten config to a running server
                "--web.enable-lifecycle",
            ],
            self.log_file,
            self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def probe(self) -> Health:
        return ready_probe(self.name, self.url)

    def after_ready(self) -> None:
        if self.pid() is None:
            return  # not ours: its configuration is not the one written here
        try:
            response = requests.post(f"{self.url}/-/reload", timeout=30)
        except requests.RequestException as exc:
            raise DevstackError(f"Prometheus did not reload its configuration: {exc}") from None
        if response.status_code != 200:
            raise DevstackError(
                f"Prometheus refused {self.home / 'prometheus.yml'} "
                f"({response.status_code}): {response.text.strip()[:500]}"
            )


OPENBAO_WRITE_RETRY_S = 30.0


def openbao_secrets() -> dict[str, str]:
    """What ``stack up`` stores at ``secret/cdc/connect``: the keys of the connectors'
    secrets (pipeline.yaml's connectors.secrets defaults), as the stack's services use them."""
    return {
        "postgres.user": POSTGRES_USER,
        "postgres.password": POSTGRES_PASSWORD,
        "scylla.user": SCYLLA_USER,
        "scylla.password": SCYLLA_PASSWORD,
        "mask.salt": configs.MASK_SALT,
    }


class OpenBao(Service):
    """OpenBao, a Vault-API server: raft storage in the state directory, initialised once
    with a single unseal key share kept in a 0600 file beside it and unsealed at every
    ``up``; KV v2 at ``secret/`` holds the connectors' secrets, AppRole can read them."""

    name = "openbao"
    start_timeout_s = 60.0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{OPENBAO_PORT}"

    @property
    def init_file(self) -> Path:
        """The unseal key and root token from ``operator init`` (mode 0600)."""
        return self.home / "init.json"

    def install(self) -> None:
        install.openbao_binary()

    def prepare(self) -> None:
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        (self.home / "config.hcl").write_text(configs.openbao_hcl(self.home))

    def start(self) -> None:
        processes.spawn(
            [str(install.openbao_binary()), "server", f"-config={self.home / 'config.hcl'}"],
            self.log_file,
            self.layout.pid_file(self.name),
            cwd=self.home,
        )

    def root_token(self) -> str | None:
        try:
            return str(json.loads(self.init_file.read_text())["root_token"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _health(self) -> dict[str, Any] | str:
        """sys/health's JSON (it answers 200, 429, 501 or 503 with one), or why not."""
        url = f"{self.url}/v1/sys/health"
        try:
            response = requests.get(url, timeout=PROBE_TIMEOUT_S)
            body = response.json()
        except (requests.RequestException, ValueError) as exc:
            return request_failure(url, exc)
        return body if isinstance(body, dict) else f"GET {url} answered {body!r}"

    def probe(self) -> Health:
        health = self._health()
        if isinstance(health, str):
            return Health(self.name, False, health)
        if not health.get("initialized"):
            return Health(self.name, False, "not initialised: run 'cdc-pipelines stack up'")
        if health.get("sealed"):
            return Health(self.name, False, "sealed: 'cdc-pipelines stack up' unseals it")
        if health.get("standby"):
            return Health(self.name, False, "unsealed, standby (not yet the active node)")
        return Health(
            self.name,
            True,
            f"OpenBao {health.get('version', '?')} unsealed on {LOOPBACK}:{OPENBAO_PORT}",
        )

    def ready_check(self) -> Health:
        health = self._health()
        if isinstance(health, dict) and self.pid() is not None:
            if not health.get("initialized"):
                self._initialise()
                self._unseal()
            elif health.get("sealed"):
                self._unseal()
        return self.probe()

    def _initialise(self) -> None:
        if self.init_file.exists():
            raise DevstackError(
                f"OpenBao on port {OPENBAO_PORT} is not initialised, but {self.init_file} holds "
                f"the keys of an earlier one: its data ({self.home / 'data'}) is gone. Reset it: "
                f"'cdc-pipelines stack down', remove {self.home}, then 'stack up'"
            )
        response = requests.put(
            f"{self.url}/v1/sys/init",
            json={"secret_shares": 1, "secret_threshold": 1},
            timeout=60,
        )
        if response.status_code != 200:
            raise DevstackError(
                f"OpenBao refused 'operator init' ({response.status_code}): {response.text[:500]}"
            )
        answer = response.json()
        keys = {"unseal_keys_b64": answer["keys_base64"], "root_token": answer["root_token"]}
        partial = self.init_file.with_name(self.init_file.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(keys, out)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(self.init_file)

    def _unseal(self) -> None:
        try:
            keys = json.loads(self.init_file.read_text())["unseal_keys_b64"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DevstackError(
                f"OpenBao is sealed and its unseal key cannot be read from {self.init_file} "
                f"({exc}); without it the data cannot be opened: remove {self.home} to start "
                "afresh (its secrets are lost; 'stack up' stores the stack's own again)"
            ) from None
        for key in keys:
            response = requests.put(f"{self.url}/v1/sys/unseal", json={"key": key}, timeout=30)
            if response.status_code != 200:
                raise DevstackError(
                    f"OpenBao refused the unseal key in {self.init_file} "
                    f"({response.status_code}): {response.text[:500]}"
                )

    def client(self) -> hvac.Client:
        token = self.root_token()
        if token is None:
            raise DevstackError(f"OpenBao's root token is not in {self.init_file}")
        return hvac.Client(url=self.url, token=token, timeout=30)

    def after_ready(self) -> None:
        if self.root_token() is None:
            return  # not the stack's server: nothing to bootstrap with
        client = self.client()
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        mount = mounts.get(f"{OPENBAO_KV_MOUNT}/")
        if mount is None:
            client.sys.enable_secrets_engine("kv", path=OPENBAO_KV_MOUNT, options={"version": "2"})
        elif mount.get("type") != "kv" or (mount.get("options") or {}).get("version") != "2":
            raise DevstackError(
                f"OpenBao's {OPENBAO_KV_MOUNT}/ is a {mount.get('type')} mount, not KV v2"
            )
        self._store_secrets(client)
        if "approle/" not in client.sys.list_auth_methods()["data"]:
            client.sys.enable_auth_method("approle")
        client.sys.create_or_update_policy(
            OPENBAO_POLICY, configs.openbao_read_policy(OPENBAO_SECRET_PATH)
        )
        client.auth.approle.create_or_update_approle(
            OPENBAO_APPROLE, token_policies=[OPENBAO_POLICY], token_ttl="1h", token_max_ttl="4h"
        )
        client.sys.create_or_update_policy(
            OPENBAO_CONNECT_POLICY, configs.openbao_read_policy("cdc/*")
        )
        self._renew_connect_token(client)

    @property
    def connect_token_file(self) -> Path:
        """The Connect worker's token (mode 0600); its Vault config provider reads it at every
        lookup, so a token renewed here is used without restarting the worker."""
        return self.home / OPENBAO_CONNECT_TOKEN_FILE

    def _renew_connect_token(self, client: hvac.Client) -> None:
        """A token that reads the secrets under ``secret/cdc/`` and nothing else, replaced when
        missing, revoked or within a week of its end."""
        try:
            current = self.connect_token_file.read_text().strip()
            ttl = client.auth.token.lookup(current)["data"]["ttl"]
            if current and int(ttl) > 7 * 24 * 3600:
                return
        except (OSError, hvac.exceptions.VaultError, KeyError, TypeError, ValueError):
            pass
        created = client.auth.token.create_orphan(
            policies=[OPENBAO_CONNECT_POLICY],
            no_default_policy=True,
            ttl=OPENBAO_CONNECT_TOKEN_TTL,
            display_name="cdc-connect",
        )
        token = created["auth"]["client_token"]
        partial = self.connect_token_file.with_name(self.connect_token_file.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
        partial.replace(self.connect_token_file)

    def _store_secrets(self, client: hvac.Client) -> None:
        """Write the stack's secrets unless they are there already (no new version per up)."""
        wanted = openbao_secrets()
        kv = client.secrets.kv.v2
        deadline = time.monotonic() + OPENBAO_WRITE_RETRY_S
        while True:
            try:
                try:
                    current = kv.read_secret_version(
                        path=OPENBAO_SECRET_PATH,
                        mount_point=OPENBAO_KV_MOUNT,
                        raise_on_deleted_version=False,
                    )["data"]["data"]
                except hvac.exceptions.InvalidPath:
                    current = None
                if current != wanted:
                    kv.create_or_update_secret(
                        path=OPENBAO_SECRET_PATH, secret=wanted, mount_point=OPENBAO_KV_MOUNT
                    )
                return
            except hvac.exceptions.VaultError as exc:
                # A new KV v2 mount answers errors while it upgrades its storage.
                if time.monotonic() > deadline:
                    raise DevstackError(
                        f"storing the stack's secrets at {OPENBAO_KV_MOUNT}/{OPENBAO_SECRET_PATH} "
                        f"in OpenBao failed: {exc}"
                    ) from None
                time.sleep(0.5)


SERVICE_TYPES: tuple[type[Service], ...] = (
    Postgres,
    Cassandra,
    Kafka,
    Connect,
    Pushgateway,
    Prometheus,
    OpenBao,
)


def all_services(layout: StackLayout) -> list[Service]:
    return [service_type(layout) for service_type in SERVICE_TYPES]
