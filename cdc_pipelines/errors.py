"""Exceptions, one per failure domain.

Every message names the thing that failed (file, field, endpoint, table) and
what to do about it; the CLI maps each domain to an exit code.
"""

from __future__ import annotations

import re

REDACTED = "***"
# scheme://user:password@host — the password runs to the last '@' before a blank or quote.
# A host's port and path (``host:9091/metrics/…@base64/…``) are not a password.
_URL_USERINFO = re.compile(
    r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)(?!\d+(?:/|$))[^\s'\"]*(?=@)"
)
# user:password@host without a scheme (libpq repeats such a malformed DSN whole).
_BARE_USERINFO = re.compile(r"(?P<keep>(?:^|(?<=[\s'\"(=]))[^\s:/@'\"()=]+:)[^\s'\"/]*(?=@[\w\[])")
# password=… in a conninfo string, a URL query or a JDBC URL (quoted libpq values included).
# Also PGPASSWORD=…, password: … and "password": "…" (an environment dump, YAML, JSON).
_PASSWORD_PARAM = re.compile(
    r"(?P<keep>\b(?:pg)?password[\"']?\s*[=:]\s*)"
    r"(?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?|[^\s&;,'\"}]+)",
    re.IGNORECASE,
)
MIN_LITERAL_SECRET = 4


def redact_secrets(text: str, *secrets: str | None) -> str:
    """``text`` with every password it holds replaced by ``***``: URL user info, bare
    ``user:password@host``, ``password=`` parameters and each of ``secrets`` (known values,
    say a DSN's password, hidden wherever the text repeats them)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        if len(secret) >= MIN_LITERAL_SECRET:
            text = text.replace(secret, REDACTED)
    for pattern in (_URL_USERINFO, _BARE_USERINFO, _PASSWORD_PARAM):
        text = pattern.sub(lambda m: m.group("keep") + REDACTED, text)
    return text


class CdcPipelinesError(Exception):
    """Base class: an error the user can act on, printed without a traceback.

    Its message is redacted (:func:`redact_secrets`): a wrapped driver error that repeats a
    connection string keeps its password out of every log and terminal."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_secrets(a) if isinstance(a, str) else a for a in args))


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
