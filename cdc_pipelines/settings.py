"""Connection settings read from the ``CDC_*`` environment variables.

The same variables are printed by ``cdc-pipelines stack env`` and read by the
CLI, the Dagster resources and the tests, so every entry point agrees on where
the services are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict

from cdc_pipelines.errors import ConfigError, redact_secrets

DEFAULT_SCYLLA_CONTACT_POINTS = "127.0.0.1"
DEFAULT_SCYLLA_PORT = 9042
DEFAULT_POSTGRES_DSN = "postgresql://cdc@127.0.0.1:5432/cdc"
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_CONNECT_URL = "http://127.0.0.1:8083"
DEFAULT_PUSHGATEWAY_URL = "http://127.0.0.1:9091"

ENV_NAMES = (
    "CDC_SCYLLA_CONTACT_POINTS",
    "CDC_SCYLLA_PORT",
    "CDC_POSTGRES_DSN",
    "CDC_KAFKA_BOOTSTRAP_SERVERS",
    "CDC_CONNECT_URL",
    "CDC_PUSHGATEWAY_URL",
)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where each service of the pipeline listens."""

    scylla_contact_points: tuple[str, ...] = (DEFAULT_SCYLLA_CONTACT_POINTS,)
    scylla_port: int = DEFAULT_SCYLLA_PORT
    postgres_dsn: str = DEFAULT_POSTGRES_DSN
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    connect_url: str = DEFAULT_CONNECT_URL
    pushgateway_url: str = DEFAULT_PUSHGATEWAY_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConnectionSettings:
        env = os.environ if environ is None else environ
        port_text = env.get("CDC_SCYLLA_PORT", str(DEFAULT_SCYLLA_PORT))
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(
                f"CDC_SCYLLA_PORT={port_text!r} is not a port number; set it to the CQL port, e.g. 9042"
            ) from None
        contact_points = tuple(
            p.strip()
            for p in env.get("CDC_SCYLLA_CONTACT_POINTS", DEFAULT_SCYLLA_CONTACT_POINTS).split(",")
            if p.strip()
        )
        if not contact_points:
            raise ConfigError("CDC_SCYLLA_CONTACT_POINTS is empty; set it to host[,host…]")
        return cls(
            scylla_contact_points=contact_points,
            scylla_port=port,
            postgres_dsn=checked_dsn(env.get("CDC_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)),
            kafka_bootstrap_servers=env.get(
                "CDC_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA_BOOTSTRAP_SERVERS
            ),
            connect_url=env.get("CDC_CONNECT_URL", DEFAULT_CONNECT_URL).rstrip("/"),
            pushgateway_url=env.get("CDC_PUSHGATEWAY_URL", DEFAULT_PUSHGATEWAY_URL).rstrip("/"),
        )


def checked_dsn(dsn: str) -> str:
    """``dsn`` if libpq can parse it, else a ConfigError that does not repeat its password
    (libpq's own message quotes the whole string)."""
    try:
        conninfo_to_dict(dsn)
    except PsycopgError as exc:
        reason = redact_secrets(str(exc).strip(), dsn)
        raise ConfigError(
            f"CDC_POSTGRES_DSN is not a PostgreSQL connection string ({reason}); write it as "
            "a postgresql:// URI (an IPv6 host in brackets, e.g. [::1]:5432) or as libpq "
            "key=value pairs"
        ) from None
    return dsn
