"""Session fixtures over the real services.

When no ``CDC_*`` connection variable is set, the devstack is used: started if it
is not running (``cdc-pipelines stack up``) and its settings exported. A test that
needs a service it cannot reach fails with the reason; it never skips.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.settings import ENV_NAMES, ConnectionSettings

INTEGRATION_DIRS = ("integration", "e2e")

# The test command draws each property test's examples from the test itself, so the same
# code gets the same verdict on every machine. HYPOTHESIS_PROFILE=explore draws new ones.
hypothesis_settings.register_profile("reproducible", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))
REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(f"/{part}/" in str(item.path) for part in INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> ConnectionSettings:
    """Connection settings: the caller's ``CDC_*`` variables, else the devstack's (started if needed)."""
    if not any(name in os.environ for name in ENV_NAMES):
        layout = StackLayout.from_env()
        statuses = stack.status(layout)
        if not all(s.health.healthy for s in statuses):
            try:
                stack.up(layout, report=lambda line: print(line, flush=True))
            except CdcPipelinesError as exc:
                pytest.fail(f"the devstack could not be started: {exc}", pytrace=False)
        for name, value in stack.stack_env(layout).items():
            os.environ.setdefault(name, value)
    return ConnectionSettings.from_env()


@pytest.fixture(scope="session")
def postgres_dsn(settings: ConnectionSettings) -> str:
    import psycopg

    try:
        with psycopg.connect(settings.postgres_dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at CDC_POSTGRES_DSN is unreachable ({exc}); run 'cdc-pipelines stack up'",
            pytrace=False,
        )
    return settings.postgres_dsn


@pytest.fixture(scope="session")
def cql_session(settings: ConnectionSettings) -> Iterator[object]:
    from cassandra.cluster import Cluster

    cluster = Cluster(
        list(settings.scylla_contact_points),
        port=settings.scylla_port,
        connect_timeout=10,
        protocol_version=5,
    )
    try:
        session = cluster.connect()
    except Exception as exc:  # the driver raises several unrelated types
        pytest.fail(
            f"the CQL endpoint {settings.scylla_contact_points}:{settings.scylla_port} is "
            f"unreachable ({exc}); run 'cdc-pipelines stack up'",
            pytrace=False,
        )
    session.default_timeout = 60
    yield session
    cluster.shutdown()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: ConnectionSettings) -> str:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": settings.kafka_bootstrap_servers}).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(
            f"Kafka at {settings.kafka_bootstrap_servers} is unreachable ({exc}); "
            "run 'cdc-pipelines stack up'",
            pytrace=False,
        )
    return settings.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def connect_url(settings: ConnectionSettings, kafka_bootstrap: str) -> str:
    import requests

    try:
        requests.get(f"{settings.connect_url}/connector-plugins", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(
            f"Kafka Connect at {settings.connect_url} is unreachable ({exc}); "
            "run 'cdc-pipelines stack up'",
            pytrace=False,
        )
    return settings.connect_url


@pytest.fixture(scope="session")
def pushgateway_url(settings: ConnectionSettings) -> str:
    import requests

    try:
        requests.get(f"{settings.pushgateway_url}/-/ready", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(
            f"the Pushgateway at {settings.pushgateway_url} is unreachable ({exc}); "
            "run 'cdc-pipelines stack up'",
            pytrace=False,
        )
    return settings.pushgateway_url


@pytest.fixture
def unique_name() -> str:
    """A fresh lower-case identifier for a test's own keyspace, schema or topic."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_schema(postgres_dsn: str, unique_name: str) -> Iterator[str]:
    """A PostgreSQL schema owned by one test and dropped after it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(unique_name)))
    yield unique_name
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(unique_name)))


@pytest.fixture
def keyspace(cql_session: object, unique_name: str) -> Iterator[str]:
    """A Cassandra keyspace owned by one test and dropped after it."""
    cql_session.execute(  # type: ignore[attr-defined]
        f"CREATE KEYSPACE {unique_name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    yield unique_name
    cql_session.execute(f"DROP KEYSPACE IF EXISTS {unique_name}")  # type: ignore[attr-defined]


@pytest.fixture
def instance(tmp_path: Path, postgres_dsn: str) -> Iterator[object]:
    """A Dagster instance on the devstack's PostgreSQL, configured like ``dagster_home/``."""
    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    dagster_instance = dg.DagsterInstance.from_config(str(home))
    yield dagster_instance
    dagster_instance.dispose()
