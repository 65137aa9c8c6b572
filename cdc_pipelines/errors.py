"""Exceptions, one per failure domain.

Every message names the thing that failed (file, field, endpoint, table) and
what to do about it; the CLI maps each domain to an exit code.
"""

from __future__ import annotations


class CdcPipelinesError(Exception):
    """Base class: an error the user can act on, printed without a traceback."""

    exit_code = 1


class ConfigError(CdcPipelinesError):
    """The declaration or the environment settings are invalid."""

    exit_code = 2


class ServiceError(CdcPipelinesError):
    """A service (CQL, PostgreSQL, Kafka, Connect, Pushgateway, Vault) failed or is down."""

    exit_code = 3


class DevstackError(ServiceError):
    """A devstack service could not be installed, started or stopped."""


class ConnectError(ServiceError):
    """Kafka Connect's REST API refused a request or could not be reached."""


class ReconcileError(CdcPipelinesError):
    """A reconciliation could not complete: a value it cannot read or write, a target table
    that does not match the declaration. Not drift: exit 1 is kept for discrepancies."""

    exit_code = 3
