"""What the stack writes so Connect resolves ${vault:…} and PostgreSQL checks test logins."""

from __future__ import annotations

from pathlib import Path

from cdc_pipelines.devstack import configs
from cdc_pipelines.devstack.layout import POSTGRES_PASSWORD_GROUP, StackLayout
from cdc_pipelines.devstack.services import Connect, Health


def properties(text: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_the_worker_registers_the_projects_vault_provider_with_a_token_file() -> None:
    text = configs.connect_worker_properties(Path("/p"), Path("/state/openbao/connect.token"))
    worker = properties(text)
    assert worker["config.providers"] == "vault"  # no file provider: no secret on disk
    assert worker["config.providers.vault.class"] == "io.cdcpipelines.connect.VaultConfigProvider"
    assert worker["config.providers.vault.param.address"] == "http://127.0.0.1:8200"
    assert worker["config.providers.vault.param.token.file"] == "/state/openbao/connect.token"
    assert "param.token=" not in text  # the token itself is never written here


def test_the_connect_policy_reads_secrets_under_cdc_only() -> None:
    policy = configs.openbao_read_policy("cdc/*")
    assert 'path "secret/data/cdc/*"' in policy
    assert 'capabilities = ["read"]' in policy
    assert "create" not in policy and "update" not in policy


def test_pg_hba_checks_the_password_group_first_and_once() -> None:
    initdb = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
    written = configs.postgres_hba(initdb)
    rules = [line for line in written.splitlines() if line and not line.startswith("#")]
    assert rules[0].split() == [
        "host",
        "all",
        f"+{POSTGRES_PASSWORD_GROUP}",
        "127.0.0.1/32",
        "scram-sha-256",
    ]
    assert rules[1].split()[3:] == ["::1/128", "scram-sha-256"]
    assert rules[2:] == initdb.splitlines()
    assert configs.postgres_hba(written) == written


def test_up_restarts_a_worker_started_with_another_config_or_plugins(
    tmp_path: Path, monkeypatch
) -> None:
    layout = StackLayout(state=tmp_path / "state", cache=tmp_path / "cache")
    connect = Connect(layout)
    connect.home.mkdir(parents=True)
    (connect.home / "worker.properties").write_text("config.providers=vault\n")
    jar = layout.plugin_path / "cdc-transforms" / "cdc-transforms-0.1.0.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"v1")
    stopped: list[int] = []
    monkeypatch.setattr(Connect, "pid", lambda self: 4242)
    monkeypatch.setattr(Connect, "stop", lambda self: stopped.append(1) or True)
    monkeypatch.setattr(Connect, "probe", lambda self: Health("connect", True, "up"))

    connect.ready_check()  # started by an older checkout: no record of its configuration
    assert len(stopped) == 1
    connect.started_with_file.write_text(connect.config_digest() + "\n")
    connect.ready_check()
    assert len(stopped) == 1  # same configuration and plugins: left running
    jar.write_bytes(b"v2 is longer")
    connect.ready_check()
    assert len(stopped) == 2
    connect.started_with_file.write_text(connect.config_digest() + "\n")
    (connect.home / "worker.properties").write_text("config.providers=vault,env\n")
    connect.ready_check()
    assert len(stopped) == 3


def test_prepare_on_a_fresh_state_writes_the_worker_config_and_no_secrets(tmp_path: Path) -> None:
    layout = StackLayout(state=tmp_path / "state", cache=tmp_path / "cache")
    connect = Connect(layout)
    assert not connect.home.exists()
    connect.prepare()
    worker = properties((connect.home / "worker.properties").read_text())
    assert worker["config.providers"] == "vault"
    assert not (connect.home / "secrets").exists()
    (connect.home / "secrets").mkdir()  # left by an earlier version
    (connect.home / "secrets" / "postgres.properties").write_text("postgres.password=x\n")
    connect.prepare()
    assert not (connect.home / "secrets").exists()
