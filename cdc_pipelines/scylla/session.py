"""CQL sessions to the source cluster (ScyllaDB, or any Cassandra-protocol endpoint)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from cdc_pipelines.config import ScyllaConnection
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.settings import ConnectionSettings

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0


def quote_cql(name: str) -> str:
    """A CQL identifier, always double-quoted (case and reserved words kept)."""
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def cql_session(
    settings: ConnectionSettings, connection: ScyllaConnection | None = None
) -> Iterator[Session]:
    """A session with tuple rows, token-aware routing and the declared consistency level."""
    connection = connection or ScyllaConnection()
    contact_points = list(connection.contact_points or settings.scylla_contact_points)
    port = connection.port or settings.scylla_port
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(
            DCAwareRoundRobinPolicy(local_dc=connection.local_dc)
        ),
        consistency_level=getattr(ConsistencyLevel, connection.consistency),
        request_timeout=REQUEST_TIMEOUT_S,
        row_factory=tuple_factory,
    )
    auth = (
        PlainTextAuthProvider(connection.username, connection.password or "")
        if connection.username
        else None
    )
    cluster = Cluster(
        contact_points,
        port=port,
        auth_provider=auth,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=CONNECT_TIMEOUT_S,
        control_connection_timeout=CONNECT_TIMEOUT_S,
    )
    try:
        session = cluster.connect()
    except Exception as exc:  # NoHostAvailable, OSError, auth errors …
        cluster.shutdown()
        raise ServiceError(
            f"cannot connect to the CQL endpoint {contact_points}:{port}: {exc}; check "
            "CDC_SCYLLA_CONTACT_POINTS/CDC_SCYLLA_PORT and that the cluster is up"
        ) from None
    try:
        yield session
    finally:
        cluster.shutdown()
