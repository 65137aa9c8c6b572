"""Secrets as Kafka Connect resolves them: the mask salt, read where the workers read it.

Connect reads ``${file:<path>:<key>}`` from a Java properties file (FileConfigProvider) or
``${vault:<path>:<key>}`` from Vault. Reconciliation needs the same mask salt to compare
hashed columns and to write them in a repair, so it reads the same place. In Vault (or
OpenBao, which the local stack runs) it logs in with VAULT_TOKEN or an AppRole and reads
KV version 1 or 2, a version 2 path given as ``vault kv`` names it (``secret/cdc/connect``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from cdc_pipelines.config import MaskMode, SecretsConfig
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.settings import (
    VAULT_ADDR_ENV,
    VAULT_TOKEN_ENV,
    read_vault_secret,
    vault_api_path,
)

__all__ = ["read_mask_salt", "read_properties", "vault_api_path", "with_mask_salt"]
# A config-provider or environment reference left as text: ${file:…}, ${vault:…}, ${NAME}.
_UNRESOLVED = re.compile(r"\$\{[^}]*\}")


def _logical_lines(text: str) -> list[str]:
    """Java's logical lines: comments dropped, leading blanks stripped, a line ending in an
    odd number of backslashes continued by the next one (whose leading blanks go)."""
    lines: list[str] = []
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if pending is None and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending = (pending or "") + line[:-1]
            continue
        lines.append((pending or "") + line)
        pending = None
    if pending is not None:
        lines.append(pending)
    return lines


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "u" and i + 6 <= len(text):
            digits = text[i + 2 : i + 6]
            if not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError(f"malformed \\uxxxx escape at character {i}")
            out.append(chr(int(digits, 16)))
            i += 6
            continue
        out.append(_ESCAPES.get(following, following))
        i += 2
    return "".join(out)


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file as ``java.util.Properties.load`` reads it (Kafka's
    FileConfigProvider does): ``key=value``, ``key: value`` or ``key value``, escapes,
    continued lines; the value keeps its trailing blanks."""
    entries: dict[str, str] = {}
    for line in _logical_lines(path.read_text(encoding="utf-8")):
        end = 0
        while end < len(line) and line[end] not in "=: \t\f":
            end += 2 if line[end] == "\\" else 1
        key = line[:end]
        rest = line[end:].lstrip(" \t\f")
        if rest[:1] in ("=", ":") and line[end : end + 1] in (" ", "\t", "\f", "=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        entries[_unescape(key)] = _unescape(rest)
    return entries


def _from_file(secrets: SecretsConfig) -> str:
    path = Path(secrets.path)
    try:
        entries = read_properties(path)
    except (ValueError, UnicodeDecodeError) as exc:  # never the value: it is the secret
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ConfigError(
            f"cannot read the mask salt from {path}: the file is malformed ({reason}); write "
            "it as Java properties in UTF-8, as Kafka's FileConfigProvider reads it"
        ) from None
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
    path = str(secrets.vault_path)
    url = secrets.vault_url or os.environ.get(VAULT_ADDR_ENV)
    if not url:
        raise ConfigError(
            "the mask salt is in Vault: set connectors.secrets.vault_url (or VAULT_ADDR) and "
            f"{VAULT_TOKEN_ENV} so reconciliation can read {path}"
        )
    secret = read_vault_secret(path, url=url)
    if secrets.mask_salt_key not in secret:
        raise ConfigError(
            f"Vault secret {path} has no {secrets.mask_salt_key!r} key; add the "
            "salt Connect hashes masked columns with"
        )
    return secret[secrets.mask_salt_key]


def read_mask_salt(secrets: SecretsConfig) -> bytes:
    """The salt Connect's ``HashFields`` transform prepends to a hashed column's value.

    An empty salt, or one still holding a ``${…}`` reference nothing resolved, is refused:
    hashes without a real salt can be reversed by hashing guesses."""
    where = (
        f"Vault secret {secrets.vault_path}" if secrets.provider == "vault" else f"{secrets.path}"
    )
    salt = _from_vault(secrets) if secrets.provider == "vault" else _from_file(secrets)
    if not salt.strip():
        raise ConfigError(
            f"the mask salt {secrets.mask_salt_key!r} in {where} is empty; hashed columns "
            "would be unsalted SHA-256, which anyone can reverse by hashing guesses: set it "
            "to a long random value (the same one Connect reads)"
        )
    if _UNRESOLVED.search(salt):
        raise ConfigError(
            f"the mask salt {secrets.mask_salt_key!r} in {where} holds an unresolved reference "
            "('${…}'), so every deployment would hash with the same known text: write the "
            "resolved secret there"
        )
    return salt.encode()


def with_mask_salt(table: ReplicatedTable) -> ReplicatedTable:
    """``table`` ready to read hashed columns: its salt loaded (once) when it has any."""
    if table.mask_salt is not None or MaskMode.HASH not in table.spec.mask.values():
        return table
    return dataclasses.replace(table, mask_salt=read_mask_salt(table.secrets))
