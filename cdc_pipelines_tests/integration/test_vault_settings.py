"""CDC_VAULT_SECRET_PATH against the stack's OpenBao: the CLI takes the PostgreSQL login from
Vault (by token or AppRole), and says which path and what to do when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import hvac
import psycopg
import pytest
from psycopg import sql

from cdc_pipelines.devstack.layout import (
    OPENBAO_APPROLE,
    OPENBAO_KV_MOUNT,
    OPENBAO_SECRET_PATH,
    POSTGRES_PASSWORD_GROUP,
    POSTGRES_USER,
)
from cdc_pipelines.settings import ConnectionSettings

NO_LOGIN_DSN = "postgresql://127.0.0.1:5432/cdc"


@pytest.fixture
def vault() -> hvac.Client:
    url, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not url or not token:
        pytest.fail("VAULT_ADDR and VAULT_TOKEN are not set; run 'cdc-pipelines stack up'")
    return hvac.Client(url=url, token=token, timeout=10)


@pytest.fixture
def checked_login(postgres_dsn: str, vault: hvac.Client, unique_name: str) -> Iterator[str]:
    """A login whose password PostgreSQL checks, stored at a Vault path of this test's own."""
    role, password = f"cdc_{unique_name}", f"pw-{uuid.uuid4().hex}"
    path = f"cdc/test-{unique_name}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(password), sql.Identifier(POSTGRES_PASSWORD_GROUP)
            )
        )
    vault.secrets.kv.v2.create_or_update_secret(
        path=path,
        secret={"postgres.user": role, "postgres.password": password},
        mount_point=OPENBAO_KV_MOUNT,
    )
    try:
        yield f"{OPENBAO_KV_MOUNT}/{path}"
    finally:
        vault.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=OPENBAO_KV_MOUNT
        )
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_login_comes_from_vault_and_postgres_checks_it(checked_login: str) -> None:
    env = {**os.environ, "CDC_VAULT_SECRET_PATH": checked_login, "CDC_POSTGRES_DSN": NO_LOGIN_DSN}
    settings = ConnectionSettings.from_env(env)
    with psycopg.connect(settings.postgres_dsn) as conn:
        user = conn.execute("SELECT current_user").fetchone()
    assert user == (checked_login.rsplit("/", 1)[1].replace("test-", "cdc_"),)
    # Without Vault the same DSN has no password, which this login needs.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            NO_LOGIN_DSN.replace("//", f"//{user[0]}@"), connect_timeout=5, password="wrong"
        ).close()


def test_an_approle_reads_the_stacks_logins(vault: hvac.Client, monkeypatch) -> None:
    role_id = vault.auth.approle.read_role_id(OPENBAO_APPROLE)["data"]["role_id"]
    secret_id = vault.auth.approle.generate_secret_id(OPENBAO_APPROLE)["data"]["secret_id"]
    env = {
        **{k: v for k, v in os.environ.items() if k != "VAULT_TOKEN"},
        "VAULT_ROLE_ID": role_id,
        "VAULT_SECRET_ID": secret_id,
        "CDC_VAULT_SECRET_PATH": f"{OPENBAO_KV_MOUNT}/{OPENBAO_SECRET_PATH}",
        "CDC_POSTGRES_DSN": NO_LOGIN_DSN,
    }
    settings = ConnectionSettings.from_env(env)
    with psycopg.connect(settings.postgres_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (POSTGRES_USER,)
    assert settings.scylla_username == "cassandra"


def test_the_cli_names_the_path_and_the_fix(vault: hvac.Client, unique_name: str) -> None:
    path = f"cdc/test-{unique_name}"
    vault.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"postgres.user": "x"}, mount_point=OPENBAO_KV_MOUNT
    )
    base = {**os.environ, "CDC_POSTGRES_DSN": NO_LOGIN_DSN}
    try:
        no_key = cli({**base, "CDC_VAULT_SECRET_PATH": f"{OPENBAO_KV_MOUNT}/{path}"}, "ddl", "plan")
        assert no_key.returncode == 2, no_key.stderr
        assert f"Vault secret {OPENBAO_KV_MOUNT}/{path} has no 'postgres.password' key" in (
            no_key.stderr
        )
    finally:
        vault.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=OPENBAO_KV_MOUNT
        )
    missing = f"{OPENBAO_KV_MOUNT}/cdc/test-{unique_name}-absent"
    no_secret = cli({**base, "CDC_VAULT_SECRET_PATH": missing}, "ddl", "plan")
    assert no_secret.returncode == 2, no_secret.stderr
    assert f"has no secret at {missing}" in no_secret.stderr
    down = cli(
        {**base, "CDC_VAULT_SECRET_PATH": missing, "VAULT_ADDR": "http://127.0.0.1:9"},
        "ddl",
        "plan",
    )
    assert down.returncode == 3, down.stderr
    assert "Vault at http://127.0.0.1:9 cannot be read" in down.stderr
    assert "unset CDC_VAULT_SECRET_PATH" in down.stderr
