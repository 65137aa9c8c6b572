"""Secrets stay out of what is printed: connector configs, wrapped driver errors, settings."""

from __future__ import annotations

import pickle

import pytest

from cdc_pipelines.connect.client import diff_config, shown_config_value
from cdc_pipelines.errors import ConfigError, ServiceError, redact_secrets
from cdc_pipelines.settings import ConnectionSettings

PASSWORD = "Sekr3t-pw-42"


@pytest.mark.parametrize(
    "key",
    [
        "connection.password",
        "consumer.override.sasl.jaas.config",
        "producer.override.sasl.jaas.config",
        "value.converter.basic.auth.user.info",
        "consumer.override.ssl.keystore.password",
        "producer.override.ssl.truststore.password",
        "consumer.override.ssl.key.password",
        "some.secret",
        "vault.token",
        "aws.credentials",
        "transforms.maskHashed.salt",
        "transforms.maskHashed.salt.secret",
    ],
)
def test_every_secret_bearing_key_is_hidden_unless_a_provider_reference(key: str) -> None:
    value = (
        f'org.apache.kafka.common.security.plain.PlainLoginModule required password="{PASSWORD}";'
    )
    assert shown_config_value(key, value) == "(hidden)"
    assert shown_config_value(key, PASSWORD) == "(hidden)"
    reference = "${file:/etc/kafka-connect/secrets/postgres.properties:postgres.password}"
    assert shown_config_value(key, reference) == reference
    # A reference followed by a literal is not a reference.
    assert shown_config_value(key, reference + PASSWORD) == "(hidden)"


@pytest.mark.parametrize(
    "value",
    [
        f"jdbc:postgresql://cdc:{PASSWORD}@db.internal:5432/cdc",
        f"http://registry:{PASSWORD}@schema-registry:8081",
        f"jdbc:postgresql://db:5432/cdc?user=cdc&password={PASSWORD}&ssl=true",
    ],
)
def test_user_info_and_password_parameters_are_masked_in_any_value(value: str) -> None:
    shown = shown_config_value("connection.url", value)
    assert PASSWORD not in shown and "***" in shown
    change = diff_config(
        "sink", {"connection.url": "jdbc:postgresql://db/cdc"}, {"connection.url": value}
    )
    assert PASSWORD not in change.describe()


def test_a_url_with_a_port_and_an_at_sign_in_its_path_is_not_a_password() -> None:
    url = "http://127.0.0.1:9091/metrics/job/cdc_dead_letter_queue/table@base64/="
    assert redact_secrets(f"the Pushgateway at {url} refused the metrics") == (
        f"the Pushgateway at {url} refused the metrics"
    )
    assert "pa/ss" not in redact_secrets("postgresql://cdc:pa/ss@db/cdc")


def test_plain_values_are_shown_as_they_are() -> None:
    assert shown_config_value("connection.url", "jdbc:postgresql://db:5432/cdc") == (
        "jdbc:postgresql://db:5432/cdc"
    )
    assert shown_config_value("topics", "cdc.shop.orders") == "cdc.shop.orders"


@pytest.mark.parametrize(
    "text",
    [
        f'missing "=" after "cdc:{PASSWORD}@127.0.0.1/cdc" in connection info string',
        f'matching "]" in IPv6 host address in URI: "postgresql://cdc:{PASSWORD}@[::1/cdc"',
        f"invalid connection option in host=db password={PASSWORD} x",
        f"host=db password='{PASSWORD} with blanks' dbname=cdc",
        f"postgresql://cdc:{PASSWORD}@@host/cdc",
        f"environment: PGPASSWORD={PASSWORD} PGUSER=cdc",
        f"password: {PASSWORD}",
        f'{{"user": "cdc", "password": "{PASSWORD}"}}',
    ],
)
def test_every_error_redacts_connection_string_passwords(text: str) -> None:
    assert PASSWORD not in redact_secrets(text)
    for error in (ConfigError(text), ServiceError(f"cannot connect: {text}")):
        assert PASSWORD not in str(error)
        assert PASSWORD not in str(pickle.loads(pickle.dumps(error)))  # across worker processes


def test_known_secrets_are_hidden_wherever_they_appear() -> None:
    assert redact_secrets(f"auth failed for {PASSWORD}!", PASSWORD) == "auth failed for ***!"
    assert redact_secrets("a short one: pw", "pw") == "a short one: pw"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://cdc:{PASSWORD}@[::1/cdc",
        f"cdc:{PASSWORD}@127.0.0.1:5432/cdc",
        f"host=127.0.0.1 password={PASSWORD} dbname",
    ],
)
def test_a_malformed_dsn_is_refused_without_its_password(dsn: str) -> None:
    with pytest.raises(ConfigError, match="CDC_POSTGRES_DSN is not a PostgreSQL") as caught:
        ConnectionSettings.from_env({"CDC_POSTGRES_DSN": dsn})
    assert PASSWORD not in str(caught.value)


def test_a_valid_dsn_is_kept_exactly() -> None:
    dsn = f"postgresql://cdc:{PASSWORD}@[::1]:5432/cdc?sslmode=disable"
    assert ConnectionSettings.from_env({"CDC_POSTGRES_DSN": dsn}).postgres_dsn == dsn
