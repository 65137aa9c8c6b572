"""Connector configs built from the declaration: options, transform chain, secrets and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdc_pipelines.config import PipelineConfig, load_config, parse_config
from cdc_pipelines.connect.configs import (
    COMPLEX_FIELDS_TO_JSON,
    HASH_FIELDS,
    JDBC_SINK_CONNECTOR_CLASS,
    SCYLLA_CONNECTOR_CLASS,
    connector_configs,
    secret_reference,
    sink_connector_config,
    sink_jdbc_url,
    sink_omitted_columns,
    source_connector_config,
)
from cdc_pipelines.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "pipeline.yaml"


@pytest.fixture(scope="module")
def example() -> PipelineConfig:
    return load_config(EXAMPLE, {"CDC_CONNECT_SECRETS_FILE": "/secrets/pg.properties"})


def declaration(columns: str, extra: str = "", head: str = "") -> PipelineConfig:
    return parse_config(
        head + "tables:\n  - source: ks.t\n    target: s.t\n    partition_key: [id]\n"
        f"    columns:\n      id: int\n{columns}{extra}",
        "t.yaml",
        {},
    )


def transforms(options: dict[str, str]) -> dict[str, dict[str, str]]:
    chain: dict[str, dict[str, str]] = {}
    for name in options["transforms"].split(","):
        prefix = f"transforms.{name}."
        chain[name] = {k[len(prefix) :]: v for k, v in options.items() if k.startswith(prefix)}
    return chain


def test_every_value_is_a_string_and_the_configs_serialize(example: PipelineConfig) -> None:
    built = connector_configs(example)
    assert [c.name for c in built] == [
        "scylla-cdc-source",
        "pg-sink-demo-orders",
        "pg-sink-demo-all_types",
        "pg-sink-demo-cdc_canary",  # the canary streams like any table
    ]
    for connector in built:
        assert all(isinstance(v, str) for v in connector.config.values())
        assert json.loads(json.dumps(connector.as_dict())) == dict(connector.config)


def test_source_reads_every_table_in_the_advanced_format(example: PipelineConfig) -> None:
    options = source_connector_config(example, contact_points=["10.0.0.5", "10.0.0.6"]).as_dict()
    assert options["connector.class"] == SCYLLA_CONNECTOR_CLASS
    assert options["topic.prefix"] == "scylla"
    assert options["scylla.table.names"] == "demo.orders,demo.all_types,demo.cdc_canary"
    assert options["scylla.cluster.ip.addresses"] == "10.0.0.5:9042,10.0.0.6:9042"
    assert options["cdc.output.format"] == "advanced"
    assert options["cdc.include.after"] == "full"
    assert options["heartbeat.interval.ms"] == "10000"
    assert options["scylla.confidence.window.size"] == "5000"
    assert options["scylla.query.time.window.size"] == "10000"
    assert options["errors.tolerance"] == "none"
    assert "scylla.user" not in options  # the example cluster does not authenticate


def test_source_credentials_are_provider_references() -> None:
    config = parse_config(
        "scylla:\n  username: ${U}\n  password: ${P}\n"
        "tables:\n  - source: ks.t\n    target: s.t\n    partition_key: [id]\n"
        "    columns: {id: int}\n",
        "t.yaml",
        {"U": "app", "P": "hunter2"},
    )
    options = source_connector_config(config).as_dict()
    # Vault by default: the secrets live there only (the project's VaultConfigProvider).
    assert options["scylla.user"] == "${vault:secret/data/cdc/connect:scylla.user}"
    assert options["scylla.password"].startswith("${vault:")
    assert "hunter2" not in json.dumps(options)


def test_sink_writes_one_table_with_upserts_and_deletes(example: PipelineConfig) -> None:
    orders = example.table("demo.orders")
    options = sink_connector_config(example, orders).as_dict()
    assert options["connector.class"] == JDBC_SINK_CONNECTOR_CLASS
    assert options["topics"] == "scylla.demo.orders"
    assert options["collection.name.format"] == "demo.orders"
    expected = {
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "quote.identifiers": "true",
        "schema.evolution": "none",
        "use.reduction.buffer": "false",
        "batch.size": "2000",
        "consumer.override.max.poll.records": "2000",
        "errors.tolerance": "all",
        "errors.deadletterqueue.topic.name": "cdc-dlq.demo.orders",
        "errors.deadletterqueue.context.headers.enable": "true",
        "errors.deadletterqueue.topic.replication.factor": "1",
        "key.converter.schemas.enable": "true",
        "value.converter.schemas.enable": "true",
    }
    assert {k: options[k] for k in expected} == expected
    assert options["connection.url"] == (
        "jdbc:postgresql://127.0.0.1:5432/cdc?stringtype=unspecified"
    )
    assert options["connection.username"] == "${vault:secret/data/cdc/connect:postgres.user}"
    assert options["connection.password"] == ("${vault:secret/data/cdc/connect:postgres.password}")


def test_sink_chain_unwraps_stamps_version_drops_and_masks(example: PipelineConfig) -> None:
    options = sink_connector_config(example, example.table("demo.orders")).as_dict()
    chain = transforms(options)
    assert list(chain) == ["unwrap", "shape", "maskHashed"]
    assert chain["unwrap"] == {
        "type": "io.debezium.transforms.ExtractNewRecordState",
        "add.fields": "source.ts_us",
        "delete.tombstone.handling.mode": "delete-to-tombstone",
    }
    assert chain["shape"]["renames"] == "__source_ts_us:_cdc_version_us"
    assert chain["shape"]["exclude"] == "internal_notes"
    assert chain["maskHashed"]["fields"] == "email"
    assert chain["maskHashed"]["type"] == HASH_FIELDS
    for name in ("shape", "maskHashed"):
        assert chain[name]["predicate"] == "isTombstone"
        assert chain[name]["negate"] == "true"
    assert options["predicates.isTombstone.type"].endswith("RecordIsTombstone")


def test_structured_columns_are_turned_into_json_before_unwrapping(
    example: PipelineConfig,
) -> None:
    table = example.table("demo.all_types")
    assert sink_omitted_columns(table) == ()
    chain = transforms(sink_connector_config(example, table).as_dict())
    assert list(chain)[:2] == ["json", "unwrap"]
    assert chain["json"] == {"type": COMPLEX_FIELDS_TO_JSON}
    assert "exclude" not in chain["shape"]
    assert "maskHashed" not in chain and "maskRedacted" not in chain


def test_tables_without_structured_columns_skip_the_json_step(example: PipelineConfig) -> None:
    chain = transforms(sink_connector_config(example, example.table("demo.orders")).as_dict())
    assert "json" not in chain


def test_masks_split_text_replacement_from_typed_empty_values() -> None:
    config = declaration(
        "      mail: text\n      note: text\n      id2: uuid\n      score: int\n      at: timestamp\n",
        extra="    mask: {mail: hash, note: redact, id2: hash, score: hash, at: redact}\n",
    )
    chain = transforms(sink_connector_config(config, config.tables[0]).as_dict())
    assert chain["maskHashed"]["fields"] == "mail,id2"
    assert chain["maskHashed"]["type"] == HASH_FIELDS
    # Under a key the sink task's config log masks (it masks only *secret / *password).
    assert chain["maskHashed"]["salt.secret"].startswith("${vault:")
    assert "salt" not in chain["maskHashed"]
    assert chain["maskRedacted"]["fields"] == "note,score,at"
    assert "replacement" not in chain["maskRedacted"]


def test_custom_version_column_is_the_rename_target() -> None:
    config = declaration("      v: text\n", head="defaults: {version_column: Written At µs}\n")
    chain = transforms(sink_connector_config(config, config.tables[0]).as_dict())
    assert chain["shape"]["renames"] == "__source_ts_us:Written At µs"
    assert "exclude" not in chain["shape"]


def test_vault_provider_references() -> None:
    config = declaration(
        "", head="connectors:\n  secrets: {provider: vault, vault_path: secret/data/cdc}\n"
    )
    options = sink_connector_config(config, config.tables[0]).as_dict()
    assert options["connection.password"] == "${vault:secret/data/cdc:postgres.password}"
    assert secret_reference(config.connectors.secrets, "k") == "${vault:secret/data/cdc:k}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("jdbc:postgresql://h:5432/db", "jdbc:postgresql://h:5432/db?stringtype=unspecified"),
        (
            "jdbc:postgresql://h/db?ssl=true",
            "jdbc:postgresql://h/db?ssl=true&stringtype=unspecified",
        ),
        (
            "jdbc:postgresql://h/db?stringtype=unspecified",
            "jdbc:postgresql://h/db?stringtype=unspecified",
        ),
    ],
)
def test_jdbc_url_gets_untyped_strings(url: str, expected: str) -> None:
    assert sink_jdbc_url(url) == expected


def test_jdbc_url_with_typed_strings_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"stringtype=varchar.*needs stringtype=unspecified"):
        sink_jdbc_url("jdbc:postgresql://h/db?stringtype=varchar")


def test_double_quote_in_a_sink_identifier_is_refused_with_the_column() -> None:
    config = declaration("      'say \"hi\"': text\n")
    with pytest.raises(ConfigError, match=r"ks\.t: column 'say \"hi\"' contains a double quote"):
        sink_connector_config(config, config.tables[0])


def test_config_provider_syntax_in_an_identifier_is_refused() -> None:
    config = declaration("      '${file:/etc/passwd:root}': text\n")
    with pytest.raises(ConfigError, match=r"config-provider reference"):
        sink_connector_config(config, config.tables[0])
