"""Credentials from Vault in the settings layer: the DSN's login replaced, and the errors when
Vault cannot give them (each names the path and the fix, never a value)."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc_pipelines.errors import ConfigError, ServiceError
from cdc_pipelines.settings import (
    VAULT_TOKEN_FILE_ENV,
    ConnectionSettings,
    dsn_with_login,
    required_key,
    vault_client,
)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://cdc@127.0.0.1:5432/cdc",
        "postgresql://old:old-pw@127.0.0.1:5432/cdc?sslmode=disable",
        "host=127.0.0.1 port=5432 dbname=cdc user=old password=old-pw",
        # libpq lets query parameters override the user info: they go too.
        "postgresql://127.0.0.1:5432/cdc?user=old&password=old-pw&sslmode=disable",
    ],
)
def test_the_vault_login_replaces_the_dsns(dsn: str) -> None:
    resolved = dsn_with_login(dsn, "svc", "p@ss:w/rd word")
    parts = conninfo_to_dict(resolved)
    assert (parts["user"], parts["password"]) == ("svc", "p@ss:w/rd word")
    assert (parts["host"], parts["dbname"]) == ("127.0.0.1", "cdc")
    assert resolved.startswith("postgresql://") == dsn.startswith("postgresql://")
    assert "old-pw" not in resolved


def test_a_missing_key_names_the_path_and_the_key_not_the_values() -> None:
    with pytest.raises(ConfigError) as caught:
        required_key(
            {"postgres.user": "cdc", "mask.salt": "s3cret-salt"}, "secret/x", "postgres.password"
        )
    message = str(caught.value)
    assert "secret/x" in message and "'postgres.password'" in message
    assert "bao kv patch secret/x" in message and "s3cret-salt" not in message


def test_vault_down_or_unset_is_a_clear_error() -> None:
    env = {"CDC_VAULT_SECRET_PATH": "secret/cdc/connect", "VAULT_TOKEN": "t"}
    with pytest.raises(
        ConfigError, match=r"no Vault address to read secret/cdc/connect.*VAULT_ADDR"
    ):
        ConnectionSettings.from_env(env)
    with pytest.raises(ServiceError) as caught:
        ConnectionSettings.from_env({**env, "VAULT_ADDR": "http://127.0.0.1:9"})
    message = str(caught.value)
    assert "Vault at http://127.0.0.1:9 cannot be read" in message
    assert "secret/cdc/connect" in message and "unset CDC_VAULT_SECRET_PATH" in message
    no_login = {"CDC_VAULT_SECRET_PATH": "secret/p", "VAULT_ADDR": "http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match=r"no Vault login to read secret/p.*VAULT_TOKEN"):
        ConnectionSettings.from_env(no_login)


def test_without_a_vault_path_the_dsn_is_used_as_given() -> None:
    settings = ConnectionSettings.from_env({"CDC_POSTGRES_DSN": "postgresql://a:b@h/d"})
    assert settings.postgres_dsn == "postgresql://a:b@h/d"
    assert settings.vault_secret_path is None and settings.scylla_username is None
    assert "a:b@" not in repr(settings)


def test_a_token_file_logs_in_and_a_bad_one_names_the_file(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s.file-token\n")
    client = vault_client("http://127.0.0.1:1", "secret/cdc/x", {VAULT_TOKEN_FILE_ENV: str(token)})
    assert client.token == "s.file-token"
    token.write_text("  \n")
    with pytest.raises(ConfigError, match=rf"{VAULT_TOKEN_FILE_ENV}=.*token is empty"):
        vault_client("http://127.0.0.1:1", "secret/cdc/x", {VAULT_TOKEN_FILE_ENV: str(token)})
    absent = str(tmp_path / "absent")
    with pytest.raises(ConfigError, match=r"absent cannot be read \(FileNotFoundError\)"):
        vault_client("http://127.0.0.1:1", "secret/cdc/x", {VAULT_TOKEN_FILE_ENV: absent})
    # VAULT_TOKEN wins over the file.
    both = {"VAULT_TOKEN": "s.env", VAULT_TOKEN_FILE_ENV: absent}
    assert vault_client("http://127.0.0.1:1", "secret/cdc/x", both).token == "s.env"
