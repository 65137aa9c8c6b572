"""The local stack's OpenBao is a real Vault-API server: reconciliation reads the mask salt
from it through ``cdc_pipelines.connect.secrets``, logged in by token or by AppRole."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import hvac
import pytest

from cdc_pipelines.config import SecretsConfig
from cdc_pipelines.connect.secrets import read_mask_salt
from cdc_pipelines.devstack.configs import MASK_SALT
from cdc_pipelines.devstack.layout import (
    OPENBAO_APPROLE,
    OPENBAO_KV_MOUNT,
    OPENBAO_SECRET_PATH,
    StackLayout,
)
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.settings import ConnectionSettings


@pytest.fixture(scope="module")
def vault(settings: ConnectionSettings) -> hvac.Client:
    url, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not url or not token:
        pytest.fail("VAULT_ADDR and VAULT_TOKEN are not set; run 'cdc-pipelines stack up'")
    client = hvac.Client(url=url, token=token, timeout=10)
    if not client.is_authenticated():
        pytest.fail(f"the token in VAULT_TOKEN is not valid at {url}")
    return client


@pytest.fixture
def test_secret(vault: hvac.Client, unique_name: str) -> Iterator[tuple[str, str]]:
    """A secret of this test's own on the KV v2 mount: (its path, its salt)."""
    path, salt = f"cdc-tests/{unique_name}", f"salt-{uuid.uuid4().hex}"
    vault.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"mask.salt": salt, "other": "x"}, mount_point=OPENBAO_KV_MOUNT
    )
    yield f"{OPENBAO_KV_MOUNT}/{path}", salt
    vault.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=OPENBAO_KV_MOUNT)


def test_a_secret_written_with_hvac_reads_back_through_the_project(test_secret):
    path, salt = test_secret
    # As `vault kv put` names it, and as the HTTP API does (Connect providers' form).
    for vault_path in (path, path.replace("/", "/data/", 1)):
        secrets = SecretsConfig(provider="vault", vault_path=vault_path)
        assert read_mask_salt(secrets) == salt.encode()


def test_the_stack_stores_the_salt_connect_uses(vault, settings):
    secrets = SecretsConfig(
        provider="vault", vault_path=f"{OPENBAO_KV_MOUNT}/{OPENBAO_SECRET_PATH}"
    )
    assert read_mask_salt(secrets) == MASK_SALT.encode()
    # Nowhere else: the stack writes no secrets file for Connect.
    assert not (StackLayout.from_env().service_dir("connect") / "secrets").exists()
    worker = (StackLayout.from_env().service_dir("connect") / "worker.properties").read_text()
    assert "FileConfigProvider" not in worker and MASK_SALT not in worker
    stored = vault.secrets.kv.v2.read_secret_version(
        path=OPENBAO_SECRET_PATH, mount_point=OPENBAO_KV_MOUNT, raise_on_deleted_version=True
    )["data"]["data"]
    assert {"postgres.user", "postgres.password", "scylla.user", "scylla.password"} <= set(stored)


def test_an_approle_login_reads_the_connectors_secret_and_nothing_else(
    vault, test_secret, monkeypatch
):
    role_id = vault.auth.approle.read_role_id(OPENBAO_APPROLE)["data"]["role_id"]
    secret_id = vault.auth.approle.generate_secret_id(OPENBAO_APPROLE)["data"]["secret_id"]
    monkeypatch.delenv("VAULT_TOKEN")
    monkeypatch.setenv("VAULT_ROLE_ID", role_id)
    monkeypatch.setenv("VAULT_SECRET_ID", secret_id)

    connectors = SecretsConfig(
        provider="vault", vault_path=f"{OPENBAO_KV_MOUNT}/{OPENBAO_SECRET_PATH}"
    )
    assert read_mask_salt(connectors) == MASK_SALT.encode()
    with pytest.raises(ServiceError, match="permission denied"):
        read_mask_salt(SecretsConfig(provider="vault", vault_path=test_secret[0]))
