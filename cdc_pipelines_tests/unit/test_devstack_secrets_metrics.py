"""What the local stack writes for Prometheus and OpenBao, and how a Vault path is read."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from cdc_pipelines.config import SecretsConfig
from cdc_pipelines.connect.secrets import read_mask_salt, vault_api_path
from cdc_pipelines.devstack import configs, services
from cdc_pipelines.errors import ConfigError


def test_prometheus_scrapes_the_pushgateway_every_5s_keeping_pushed_labels(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "a rules.yml"
    rules.write_text("groups: []\n")
    config = yaml.safe_load(configs.prometheus_yml([rules]))
    assert config["global"]["scrape_interval"] == "5s"
    assert config["rule_files"] == [str(rules)]
    (job,) = config["scrape_configs"]
    assert job["honor_labels"] is True
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9091"]}]
    assert yaml.safe_load(configs.prometheus_yml([]))["rule_files"] == []


def test_promtool_accepts_the_generated_config_with_the_repositorys_rules(
    tmp_path: Path,
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (Debian package prometheus); run `bash .ci/setup`")
    rules = sorted(services.RULES_DIR.glob("*.yml")) if services.RULES_DIR.is_dir() else []
    path = tmp_path / "prometheus.yml"
    path.write_text(configs.prometheus_yml(rules))
    result = subprocess.run(
        [promtool, "check", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_openbao_keeps_its_storage_in_the_state_dir_on_loopback(tmp_path: Path) -> None:
    hcl = configs.openbao_hcl(tmp_path)
    assert f'path    = "{tmp_path}/data"' in hcl
    assert 'address         = "127.0.0.1:8200"' in hcl
    assert 'storage "raft"' in hcl  # persistent, not the in-memory dev mode
    assert set(services.openbao_secrets()) == {
        "postgres.user",
        "postgres.password",
        "scylla.user",
        "scylla.password",
        "mask.salt",
    }


class _Mounts:
    """An hvac client stand-in answering only the mount lookup."""

    def __init__(self, mount: dict[str, Any] | Exception | None) -> None:
        self.mount = mount

    def read(self, path: str) -> dict[str, Any] | None:
        assert path.startswith("sys/internal/ui/mounts/")
        if isinstance(self.mount, Exception):
            raise self.mount
        return None if self.mount is None else {"data": self.mount}


KV2 = {"path": "secret/", "type": "kv", "options": {"version": "2"}}
KV1 = {"path": "kv/", "type": "kv", "options": {"version": "1"}}


@pytest.mark.parametrize(
    ("mount", "given", "read"),
    [
        (KV2, "secret/cdc/connect", "secret/data/cdc/connect"),
        (KV2, "/secret/cdc/connect/", "secret/data/cdc/connect"),
        (KV2, "secret/data/cdc/connect", "secret/data/cdc/connect"),
        (KV1, "kv/cdc/connect", "kv/cdc/connect"),
        ({"path": "kv/", "type": "kv", "options": None}, "kv/cdc", "kv/cdc"),
        (hvac.exceptions.Forbidden("permission denied"), "secret/cdc", "secret/cdc"),
        (None, "secret/cdc", "secret/cdc"),
    ],
)
def test_a_kv2_path_is_read_under_data(mount: object, given: str, read: str) -> None:
    assert vault_api_path(_Mounts(mount), given) == read


def test_vault_without_a_token_or_approle_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_TOKEN", "VAULT_ROLE_ID", "VAULT_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    secrets = SecretsConfig(provider="vault", vault_path="secret/cdc/connect")
    with pytest.raises(ConfigError, match="VAULT_ROLE_ID and VAULT_SECRET_ID"):
        read_mask_salt(secrets)
