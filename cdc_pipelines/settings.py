"""Connection settings read from the ``CDC_*`` environment variables.

The same variables are printed by ``cdc-pipelines stack env`` and read by the
CLI, the Dagster resources and the tests, so every entry point agrees on where
the services are.

Credentials can live in Vault instead (ADR 0012): with ``CDC_VAULT_SECRET_PATH`` naming a KV
secret (``secret/cdc/connect``, the one Kafka Connect resolves its ``${vault:…}`` references
from), the PostgreSQL login (``postgres.user``, ``postgres.password``) replaces the one in
``CDC_POSTGRES_DSN`` and the ScyllaDB login (``scylla.user``, ``scylla.password``) is used
when the declaration names none. The secret is read with hvac at every ``from_env`` (a
rotated password needs no edit anywhere), logged in with ``VAULT_TOKEN`` or an AppRole
(``VAULT_ROLE_ID`` + ``VAULT_SECRET_ID``) at ``VAULT_ADDR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import hvac
import requests
from psycopg import Error as PsycopgError
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_pipelines.errors import ConfigError, ServiceError, redact_secrets

DEFAULT_SCYLLA_CONTACT_POINTS = "127.0.0.1"
DEFAULT_SCYLLA_PORT = 9042
DEFAULT_POSTGRES_DSN = "postgresql://cdc@127.0.0.1:5432/cdc"
DEFAULT_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
DEFAULT_CONNECT_URL = "http://127.0.0.1:8083"
DEFAULT_PUSHGATEWAY_URL = "http://127.0.0.1:9091"

VAULT_SECRET_PATH_ENV = "CDC_VAULT_SECRET_PATH"
VAULT_ADDR_ENV = "VAULT_ADDR"
VAULT_TOKEN_ENV = "VAULT_TOKEN"
VAULT_TOKEN_FILE_ENV = "VAULT_TOKEN_FILE"  # a file holding the token (a mounted volume)
VAULT_ROLE_ID_ENV = "VAULT_ROLE_ID"
VAULT_SECRET_ID_ENV = "VAULT_SECRET_ID"
VAULT_TIMEOUT_S = 10
# The keys of the connectors' secret (pipeline.yaml's connectors.secrets defaults).
POSTGRES_USER_KEY = "postgres.user"
POSTGRES_PASSWORD_KEY = "postgres.password"
SCYLLA_USER_KEY = "scylla.user"
SCYLLA_PASSWORD_KEY = "scylla.password"

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
    postgres_dsn: str = field(default=DEFAULT_POSTGRES_DSN, repr=False)
    kafka_bootstrap_servers: str = DEFAULT_KAFKA_BOOTSTRAP_SERVERS
    connect_url: str = DEFAULT_CONNECT_URL
    pushgateway_url: str = DEFAULT_PUSHGATEWAY_URL
    # The ScyllaDB login from Vault, used when the declaration's scylla section names none.
    scylla_username: str | None = None
    scylla_password: str | None = field(default=None, repr=False)
    vault_secret_path: str | None = None

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
        settings = cls(
            scylla_contact_points=contact_points,
            scylla_port=port,
            postgres_dsn=checked_dsn(env.get("CDC_POSTGRES_DSN", DEFAULT_POSTGRES_DSN)),
            kafka_bootstrap_servers=env.get(
                "CDC_KAFKA_BOOTSTRAP_SERVERS", DEFAULT_KAFKA_BOOTSTRAP_SERVERS
            ),
            connect_url=env.get("CDC_CONNECT_URL", DEFAULT_CONNECT_URL).rstrip("/"),
            pushgateway_url=env.get("CDC_PUSHGATEWAY_URL", DEFAULT_PUSHGATEWAY_URL).rstrip("/"),
        )
        vault_path = env.get(VAULT_SECRET_PATH_ENV, "").strip()
        return settings.with_vault_logins(vault_path, env) if vault_path else settings

    def with_vault_logins(
        self, vault_path: str, environ: Mapping[str, str] | None = None
    ) -> ConnectionSettings:
        """These settings with the PostgreSQL login of the Vault secret at ``vault_path`` in
        the DSN, and its ScyllaDB login (when it has one)."""
        secret = read_vault_secret(vault_path, environ)
        user = required_key(secret, vault_path, POSTGRES_USER_KEY)
        password = required_key(secret, vault_path, POSTGRES_PASSWORD_KEY)
        return replace(
            self,
            postgres_dsn=dsn_with_login(self.postgres_dsn, user, password),
            scylla_username=secret.get(SCYLLA_USER_KEY) or None,
            scylla_password=secret.get(SCYLLA_PASSWORD_KEY),
            vault_secret_path=vault_path,
        )


def dsn_with_login(dsn: str, user: str, password: str) -> str:
    """``dsn`` (a URI or libpq key=value pairs) with ``user`` and ``password`` in place of
    whatever login it named; a URI stays a URI (ADBC takes only those)."""
    checked_dsn(dsn)
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        login = f"{quote(user, safe='')}:{quote(password, safe='')}"
        # libpq lets ?user= and ?password= override the user info: drop them.
        query = urlencode(
            [
                (k, v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k not in ("user", "password")
            ]
        )
        return urlunsplit(parts._replace(netloc=f"{login}@{host}", query=query))
    return make_conninfo(dsn, user=user, password=password)


def _vault_fix(path: str) -> str:
    return (
        f"{VAULT_SECRET_PATH_ENV}={path} reads the credentials from Vault: set {VAULT_ADDR_ENV} "
        f"and {VAULT_TOKEN_ENV} (or {VAULT_TOKEN_FILE_ENV}, or {VAULT_ROLE_ID_ENV} and "
        f"{VAULT_SECRET_ID_ENV}), or unset "
        f"{VAULT_SECRET_PATH_ENV} to use the login in CDC_POSTGRES_DSN"
    )


def _token_from_file(name: str | None, path: str) -> str | None:
    """The token in the file ``name`` (None when no file is named); an error names the file."""
    if not name:
        return None
    try:
        token = Path(name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{VAULT_TOKEN_FILE_ENV}={name} cannot be read ({type(exc).__name__}), so {path} "
            "cannot be read from Vault: point it at the file holding a Vault token"
        ) from None
    if not token:
        raise ConfigError(
            f"{VAULT_TOKEN_FILE_ENV}={name} is empty, so {path} cannot be read from Vault: "
            "write the token into it"
        )
    return token


def vault_client(url: str, path: str, environ: Mapping[str, str] | None = None) -> hvac.Client:
    """A client with VAULT_TOKEN (or the token in the file VAULT_TOKEN_FILE names), or logged
    in by AppRole with VAULT_ROLE_ID/VAULT_SECRET_ID."""
    env = os.environ if environ is None else environ
    token = env.get(VAULT_TOKEN_ENV) or _token_from_file(env.get(VAULT_TOKEN_FILE_ENV), path)
    role_id = env.get(VAULT_ROLE_ID_ENV)
    secret_id = env.get(VAULT_SECRET_ID_ENV)
    if token:
        return hvac.Client(url=url, token=token, timeout=VAULT_TIMEOUT_S)
    if role_id and secret_id:
        client = hvac.Client(url=url, timeout=VAULT_TIMEOUT_S)
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id)
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise ServiceError(
                f"Vault at {url}: AppRole login failed, so {path} cannot be read: "
                f"{_reason(exc)}; check {VAULT_ROLE_ID_ENV}/{VAULT_SECRET_ID_ENV}"
            ) from None
        return client
    raise ConfigError(f"no Vault login to read {path}: {_vault_fix(path)}")


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or unreachable"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {VAULT_TIMEOUT_S} s"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def vault_api_path(client: hvac.Client, path: str) -> str:
    """``path`` as the HTTP API reads it. On a KV version 2 mount a secret written as
    ``secret/cdc/connect`` (``vault kv put``) is read at ``secret/data/cdc/connect``; a path
    that already names ``data/`` under the mount, and any other mount's path, stay as given.
    When the mount cannot be looked up (a token without the right), the path is read as is."""
    path = path.strip("/")
    try:
        answer = client.read(f"sys/internal/ui/mounts/{path}")
    except (hvac.exceptions.VaultError, requests.RequestException):
        return path
    mount = (answer or {}).get("data") or {}
    mount_path = str(mount.get("path") or "")
    version = str((mount.get("options") or {}).get("version") or "1")
    if mount.get("type") != "kv" or version != "2" or not path.startswith(mount_path):
        return path
    rest = path[len(mount_path) :]
    return path if rest.startswith("data/") else f"{mount_path}data/{rest}"


def read_vault_secret(
    path: str, environ: Mapping[str, str] | None = None, url: str | None = None
) -> dict[str, str]:
    """The keys and values of the KV (version 1 or 2) secret at ``path``, read now.

    Errors name the path and what to do, never a value: no VAULT_ADDR or login is a
    ConfigError, Vault down or refusing the token a ServiceError, no secret a ConfigError."""
    env = os.environ if environ is None else environ
    url = url or env.get(VAULT_ADDR_ENV)
    if not url:
        raise ConfigError(f"no Vault address to read {path}: {_vault_fix(path)}")
    client = vault_client(url, path, env)
    try:
        answer: Any = client.read(vault_api_path(client, path))
    except hvac.exceptions.Forbidden:
        raise ServiceError(
            f"Vault at {url} refused to read {path} (permission denied): give the token or "
            f"AppRole in {VAULT_TOKEN_ENV}/{VAULT_ROLE_ID_ENV} a policy that reads it"
        ) from None
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise ServiceError(
            f"Vault at {url} cannot be read ({_reason(exc)}), so {path} is out of reach: start "
            f"Vault (on the local stack: 'cdc-pipelines stack up') or unset "
            f"{VAULT_SECRET_PATH_ENV} to use the login in CDC_POSTGRES_DSN"
        ) from None
    if answer is None:
        raise ConfigError(
            f"Vault at {url} has no secret at {path}: write it (e.g. 'bao kv put {path} "
            f"{POSTGRES_USER_KEY}=… {POSTGRES_PASSWORD_KEY}=…') or point "
            f"{VAULT_SECRET_PATH_ENV} at the secret that holds the credentials"
        )
    data = answer.get("data") or {}
    if isinstance(data.get("metadata"), dict) and isinstance(data.get("data"), dict):
        data = data["data"]  # KV version 2 nests the secret beside its metadata
    return {str(key): str(value) for key, value in data.items()}


def required_key(secret: Mapping[str, str], path: str, key: str) -> str:
    """``secret[key]``, or a ConfigError naming the path and the key (never a value)."""
    value = secret.get(key)
    if not value:
        raise ConfigError(
            f"Vault secret {path} has no {key!r} key (keys there: "
            f"{', '.join(sorted(secret)) or 'none'}); add it (e.g. 'bao kv patch {path} "
            f"{key}=…')"
        )
    return value


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
