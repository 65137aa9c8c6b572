"""CQL sessions to the source cluster (ScyllaDB, or any Cassandra-protocol endpoint).

Sessions speak the declared native protocol version (``scylla.protocol_version``, 4 by
default: ScyllaDB's). Failures of a connection itself are told apart from every other
failure (:func:`is_connection_failure`, :class:`CqlConnectionError`), so a caller can retry
the work with a fresh session instead of giving up the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from cdc_pipelines.config import ScyllaConnection
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.settings import ConnectionSettings

CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
# The driver's failures of a connection rather than of a request: a connection shut down
# (closed by the server or the network, or defunct after a framing error such as "CRC
# mismatch on header"), no host left to send a request to, a request with no answer in time.
CONNECTION_FAILURES: tuple[type[Exception], ...] = (
    ConnectionException,
    NoHostAvailable,
    OperationTimedOut,
)


class CqlConnectionError(ServiceError):
    """A CQL request or connect failed because its connection did; retrying it on a fresh
    session may succeed, unlike a failure of the request itself."""


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection's failure (the driver's or this package's)."""
    return isinstance(exc, (CqlConnectionError, *CONNECTION_FAILURES))


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
    # The declared login, else the one from Vault (settings.scylla_username, read when
    # CDC_VAULT_SECRET_PATH is set); a declared user without a password takes Vault's.
    username = connection.username or settings.scylla_username
    password = connection.password or settings.scylla_password
    auth = PlainTextAuthProvider(username, password or "") if username else None
    cluster = Cluster(
        contact_points,
        port=port,
        auth_provider=auth,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=CONNECT_TIMEOUT_S,
        control_connection_timeout=CONNECT_TIMEOUT_S,
        protocol_version=connection.protocol_version,
    )
    try:
        session = cluster.connect()
    except Exception as exc:  # NoHostAvailable, OSError, auth errors …
        cluster.shutdown()
        error = CqlConnectionError if is_connection_failure(exc) else ServiceError
        raise error(
            f"cannot connect to the CQL endpoint {contact_points}:{port} with protocol "
            f"v{connection.protocol_version}: {exc}; check CDC_SCYLLA_CONTACT_POINTS/"
            "CDC_SCYLLA_PORT, that the cluster is up and that it speaks that protocol "
            "(scylla.protocol_version in pipeline.yaml)"
        ) from None
    try:
        yield session
    finally:
        cluster.shutdown()
