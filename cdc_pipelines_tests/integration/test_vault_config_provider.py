"""The project's VaultConfigProvider (the ``vault`` config provider of the Connect worker),
compiled and run against the devstack's Connect jars and its OpenBao."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from cdc_pipelines.devstack.layout import OPENBAO_KV_MOUNT
from cdc_pipelines_tests.integration.connect_plugin import run_driver

# args: address, token file, then (path, comma-separated keys) pairs, one line for each;
# the pair ("@token", text) writes text to the token file instead (read at every lookup).
DRIVER = """
import io.cdcpipelines.connect.VaultConfigProvider;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.apache.kafka.common.config.ConfigException;

public class Drive {
  public static void main(String[] args) throws Exception {
    VaultConfigProvider provider = new VaultConfigProvider();
    provider.configure(Map.of("address", args[0], "token.file", args[1]));
    for (int i = 2; i + 1 < args.length; i += 2) {
      if (args[i].equals("@token")) {
        java.nio.file.Files.writeString(java.nio.file.Path.of(args[1]), args[i + 1]);
        continue;
      }
      try {
        Map<String, String> data = args[i + 1].isEmpty()
            ? provider.get(args[i]).data()
            : provider.get(args[i], Set.of(args[i + 1].split(","))).data();
        System.out.println("read " + new TreeMap<>(data));
      } catch (ConfigException e) {
        System.out.println("refused " + e.getMessage());
      }
    }
  }
}
"""


@pytest.fixture
def vault() -> hvac.Client:
    url, token = os.environ.get("VAULT_ADDR"), os.environ.get("VAULT_TOKEN")
    if not url or not token:
        pytest.fail("VAULT_ADDR and VAULT_TOKEN are not set; run 'cdc-pipelines stack up'")
    return hvac.Client(url=url, token=token, timeout=10)


@pytest.fixture
def test_secret(vault: hvac.Client, unique_name: str) -> Iterator[tuple[str, dict[str, str]]]:
    path = f"cdc-tests/{unique_name}"
    values = {"postgres.password": f"pw-{uuid.uuid4().hex}", "port": "5432"}
    vault.secrets.kv.v2.create_or_update_secret(
        path=path, secret=values, mount_point=OPENBAO_KV_MOUNT
    )
    yield path, values
    vault.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=OPENBAO_KV_MOUNT)


def run_provider(tmp_path: Path, token: str, *lookups: tuple[str, str]) -> list[str]:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    arguments = [value for lookup in lookups for value in lookup]
    address = os.environ["VAULT_ADDR"]
    return run_driver(
        tmp_path, "VaultConfigProvider.java", DRIVER, address, str(token_file), *arguments
    )


def test_the_provider_reads_kv2_secrets_and_refuses_without_naming_values(
    tmp_path: Path, vault: hvac.Client, test_secret: tuple[str, dict[str, str]]
) -> None:
    path, values = test_secret
    api_path = f"{OPENBAO_KV_MOUNT}/data/{path}"
    kv_path = f"{OPENBAO_KV_MOUNT}/{path}"
    # A token with only the Connect worker's policy (read secret/cdc/*), as the stack gives
    # the worker: this test's secret is outside it, the stack's is inside.
    token = vault.auth.token.create(
        policies=["cdc-connect-read"], no_default_policy=True, ttl="5m"
    )["auth"]["client_token"]
    lines = run_provider(
        tmp_path,
        os.environ["VAULT_TOKEN"],
        (api_path, "postgres.password"),
        (kv_path, ""),
        ("@token", "not-a-token"),
        (api_path, "postgres.password"),
    )
    by_api, whole, bad_token = lines
    assert by_api == "read {postgres.password=" + values["postgres.password"] + "}"
    assert whole == f"read {{port=5432, postgres.password={values['postgres.password']}}}"
    assert bad_token.startswith("refused") and "403" in bad_token
    lines = run_provider(
        tmp_path,
        token,
        (api_path, "postgres.password"),
        (f"{OPENBAO_KV_MOUNT}/data/cdc/connect", "postgres.password"),
        (f"{OPENBAO_KV_MOUNT}/data/cdc/connect", "no.such.key"),
        (f"{OPENBAO_KV_MOUNT}/data/cdc/no-such-secret", "x"),
    )
    outside, stack_secret, missing_key, missing_path = lines
    assert outside.startswith("refused") and "403" in outside
    assert stack_secret.startswith("read {postgres.password=")
    assert missing_key == (
        f"refused Vault secret {OPENBAO_KV_MOUNT}/data/cdc/connect at "
        f"{os.environ['VAULT_ADDR']} has no key 'no.such.key'"
    )
    assert missing_path.startswith("refused") and "has no secret at" in missing_path
    for line in (outside, missing_key, missing_path, bad_token):
        assert values["postgres.password"] not in line
