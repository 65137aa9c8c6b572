"""Session fixtures over the real services.

When no ``CDC_*`` connection variable is set, the devstack is used: started if it
is not running (``cdc-pipelines stack up``) and its settings exported. A test that
needs a service it cannot reach fails with the reason; it never skips.

Dagster storage: the tests never use the instance the README opens (``dagster_home/``,
database ``dagster``). ``dagster_storage`` creates the test database ``dagster_test`` on the
same server when it is missing, writes a DAGSTER_HOME of its own pointing at it, and
exports ``DAGSTER_HOME`` and ``DAGSTER_PG_URL`` for the session, so whatever reads either
(the ``instance`` fixture, the demo run in a subprocess, a copy of ``dagster_home``) lands
in the test database. Every integration and end-to-end test gets it before it starts.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from hypothesis import settings as hypothesis_settings

from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import DAGSTER_DB, StackLayout
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.settings import ENV_NAMES, ConnectionSettings

INTEGRATION_DIRS = ("integration", "e2e")
DAGSTER_TEST_DB = "dagster_test"
DAGSTER_URL_ENV = "DAGSTER_PG_URL"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
DAGSTER_URL_SCHEME = "postgresql+psycopg2"  # what dagster.yaml's storage needs (see there)
STORAGE_LOCK = "cdc_pipelines_tests.dagster_storage"

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
        protocol_version=4,
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


# --- Dagster storage of the tests ----------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` (a SQLAlchemy or libpq URL) naming ``database`` instead of its own."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def libpq_url(url: str) -> str:
    """A SQLAlchemy ``postgresql+driver://`` URL as psycopg takes it."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@dataclass(frozen=True)
class DagsterStorage:
    """Where the tests keep Dagster's runs and events, apart from the user's instance."""

    home: Path  # a DAGSTER_HOME: dagster_home/dagster.yaml with the test database written in
    url: str  # the test database, as dagster.yaml takes it
    user_url: str  # the README's instance: tests may read it, never write it

    def database_url(self, name: str) -> str:
        """Another database on the same server (a test that needs storage of its very own)."""
        return with_database(self.url, name)

    def create_database(self, name: str) -> None:
        """Create database ``name`` on the test storage's server unless it exists."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(libpq_url(self.user_url), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                # Another test session may create it at the same moment.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        if name in (database_of(self.url), database_of(self.user_url)):
            raise ValueError(f"refusing to drop the shared Dagster database {name!r}")
        with psycopg.connect(libpq_url(self.user_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _user_dagster_url(postgres_dsn: str) -> str:
    """The storage ``dagster_home/dagster.yaml`` resolves to: $DAGSTER_PG_URL, else the
    devstack's ``dagster`` database on the server of CDC_POSTGRES_DSN."""
    configured = os.environ.get(DAGSTER_URL_ENV)
    if configured:
        return configured
    parts = urlsplit(with_database(postgres_dsn, DAGSTER_DB))
    return urlunsplit(parts._replace(scheme=DAGSTER_URL_SCHEME))


def _write_home(home: Path, url: str) -> None:
    """``dagster_home/dagster.yaml`` (concurrency, pools, freshness …) on storage ``url``."""
    document = yaml.safe_load((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    document["storage"] = {"postgres": {"postgres_url": url}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="session")
def dagster_storage(
    postgres_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterStorage]:
    """The tests' own Dagster storage: database ``dagster_test`` and a DAGSTER_HOME using it.

    Exported as ``DAGSTER_HOME`` and ``DAGSTER_PG_URL`` for the session (restored after it),
    so code that opens ``dagster_home/`` or the current DAGSTER_HOME reaches this storage too.
    """
    import dagster as dg
    import psycopg

    user_url = _user_dagster_url(postgres_dsn)
    if database_of(user_url) == DAGSTER_TEST_DB:
        pytest.fail(
            f"{DAGSTER_URL_ENV} names the tests' own database {DAGSTER_TEST_DB!r}; point it at "
            "the instance you open in the UI",
            pytrace=False,
        )
    storage = DagsterStorage(
        home=tmp_path_factory.mktemp("dagster_home"),
        url=with_database(user_url, DAGSTER_TEST_DB),
        user_url=user_url,
    )
    try:
        storage.create_database(DAGSTER_TEST_DB)
    except psycopg.Error as exc:
        pytest.fail(
            f"cannot create the tests' Dagster database {DAGSTER_TEST_DB!r} next to "
            f"{database_of(user_url)!r} ({exc})",
            pytrace=False,
        )
    _write_home(storage.home, storage.url)
    with psycopg.connect(libpq_url(storage.url), autocommit=True) as conn:
        # The first instance creates Dagster's tables: one session at a time.
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (STORAGE_LOCK,))
        try:
            dg.DagsterInstance.from_config(str(storage.home)).dispose()
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (STORAGE_LOCK,))
    saved = {name: os.environ.get(name) for name in (DAGSTER_HOME_ENV, DAGSTER_URL_ENV)}
    os.environ[DAGSTER_HOME_ENV] = str(storage.home)
    os.environ[DAGSTER_URL_ENV] = storage.url
    yield storage
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(autouse=True)
def _dagster_storage_of_the_tests(request: pytest.FixtureRequest) -> None:
    """Every test on the real services runs with the tests' Dagster storage in place."""
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue("dagster_storage")


@pytest.fixture
def instance(dagster_storage: DagsterStorage) -> Iterator[object]:
    """A Dagster instance on the tests' storage, configured like ``dagster_home/``."""
    import dagster as dg

    dagster_instance = dg.DagsterInstance.from_config(str(dagster_storage.home))
    yield dagster_instance
    dagster_instance.dispose()
