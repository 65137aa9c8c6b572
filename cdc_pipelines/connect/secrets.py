"""Secrets as Kafka Connect resolves them: the mask salt, read where the workers read it.

Connect reads ``${file:<path>:<key>}`` from a Java properties file (FileConfigProvider) or
``${vault:<path>:<key>}`` from Vault. Reconciliation needs the same mask salt to compare
hashed columns and to write them in a repair, so it reads the same place.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import hvac
import requests

from cdc_pipelines.config import MaskMode, SecretsConfig
from cdc_pipelines.errors import ConfigError, ServiceError
from cdc_pipelines.replicated_table import ReplicatedTable

VAULT_TOKEN_ENV = "VAULT_TOKEN"
VAULT_ADDR_ENV = "VAULT_ADDR"
VAULT_TIMEOUT_S = 10


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file's ``key=value`` / ``key: value`` lines (comments skipped)."""
    entries: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        key, value = (line[:cut], line[cut + 1 :]) if cut >= 0 else (line, "")
        entries[key.strip()] = value.strip()
    return entries


def _from_file(secrets: SecretsConfig) -> str:
    path = Path(secrets.path)
    try:
        entries = read_properties(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the mask salt from {path} ({exc.strerror or exc}); reconciliation "
            "hashes masked columns with the salt Connect uses: make the file readable here or "
            "point connectors.secrets.path (CDC_CONNECT_SECRETS_FILE) at a copy"
        ) from None
    if secrets.mask_salt_key not in entries:
        raise ConfigError(
            f"{path} has no {secrets.mask_salt_key!r} entry; add the salt Connect hashes "
            "masked columns with (connectors.secrets.mask_salt_key names the entry)"
        )
    return entries[secrets.mask_salt_key]


def _from_vault(secrets: SecretsConfig) -> str:
    url = secrets.vault_url or os.environ.get(VAULT_ADDR_ENV)
    token = os.environ.get(VAULT_TOKEN_ENV)
    if not url or not token:
        raise ConfigError(
            "the mask salt is in Vault: set connectors.secrets.vault_url (or VAULT_ADDR) and "
            f"{VAULT_TOKEN_ENV} so reconciliation can read {secrets.vault_path}"
        )
    try:
        answer = hvac.Client(url=url, token=token, timeout=VAULT_TIMEOUT_S).read(secrets.vault_path)
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        raise ServiceError(f"Vault at {url}: cannot read {secrets.vault_path}: {exc}") from None
    data = (answer or {}).get("data") or {}
    data = data.get("data", data)  # KV version 2 nests the secret one level deeper
    if secrets.mask_salt_key not in data:
        raise ConfigError(
            f"Vault secret {secrets.vault_path} has no {secrets.mask_salt_key!r} key; add the "
            "salt Connect hashes masked columns with"
        )
    return str(data[secrets.mask_salt_key])


def read_mask_salt(secrets: SecretsConfig) -> bytes:
    """The salt Connect's ``HashFields`` transform prepends to a hashed column's value."""
    salt = _from_vault(secrets) if secrets.provider == "vault" else _from_file(secrets)
    return salt.encode()


def with_mask_salt(table: ReplicatedTable) -> ReplicatedTable:
    """``table`` ready to read hashed columns: its salt loaded (once) when it has any."""
    if table.mask_salt is not None or MaskMode.HASH not in table.spec.mask.values():
        return table
    return dataclasses.replace(table, mask_salt=read_mask_salt(table.secrets))
