"""Valid declarations: the example file, hostile-but-legal names, interpolation and the derived names."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_pipelines.config import (
    DEFAULT_VERSION_COLUMN,
    MaskMode,
    PipelineConfig,
    TimestampPrecision,
    load_config,
    parse_config,
)
from cdc_pipelines.cqltypes import SCALAR_TYPES
from cdc_pipelines.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "pipeline.yaml"


def one_table(columns: str, *, keys: str = "partition_key: [id]", extra: str = "") -> str:
    return (
        "tables:\n  - source: ks.t\n    target: public.t\n"
        f"    {keys}\n    columns:\n{columns}{extra}"
    )


@pytest.fixture(scope="module")
def example() -> PipelineConfig:
    return load_config(EXAMPLE, {})


def test_example_declares_orders_and_all_types(example: PipelineConfig) -> None:
    assert [t.source for t in example.tables] == ["demo.orders", "demo.all_types"]
    orders = example.table("demo.orders")
    assert orders.partition_key == ("region", "CustomerId")
    assert orders.clustering_key == ("placed_at", "order")
    assert orders.mask == {"email": MaskMode.HASH}
    assert "internal_notes" not in [c.name for c in orders.replicated_columns]
    assert {"user", "order", "CustomerId"} <= {c.name for c in orders.columns}
    assert example.lag_slo_for(orders).max_seconds == 30
    assert example.slices_for(orders) == 8
    assert len(orders.expectations) >= 5


def test_example_all_types_covers_every_cql_type(example: PipelineConfig) -> None:
    table = example.table("demo.all_types")
    declared = {c.type.split("<")[0] for c in table.columns}
    scalar_names = {c.cql_type.name for c in table.columns if c.cql_type.is_scalar}
    # varchar is an alias of text once parsed, so compare the declared spelling too.
    assert SCALAR_TYPES - {"counter"} <= scalar_names | declared
    assert {"list", "set", "map", "tuple", "frozen"} <= declared
    udt = table.column("c_udt").cql_type
    assert udt.name == "udt" and udt.frozen and udt.udt_name in example.user_types


def test_example_secrets_come_from_the_environment() -> None:
    config = load_config(
        EXAMPLE,
        {
            "CDC_SCYLLA_USERNAME": "app",
            "CDC_SCYLLA_PASSWORD": "s3cret: #not a comment",
            "CDC_CONNECT_SECRETS_FILE": "/run/secrets/connect.properties",
            "CDC_SCYLLA_PORT": "19042",
        },
    )
    assert config.scylla.password == "s3cret: #not a comment"
    assert config.scylla.port == 19042
    assert config.connectors.secrets.path == "/run/secrets/connect.properties"


def test_example_defaults_apply_without_environment(example: PipelineConfig) -> None:
    # An empty plain value reads as YAML null: no credentials, no authentication.
    assert example.scylla.username is None
    assert example.scylla.password is None
    assert example.scylla.port == 9042
    assert example.connectors.sink_connection_url == "jdbc:postgresql://127.0.0.1:5432/cdc"


def test_hostile_but_legal_names_are_accepted() -> None:
    text = one_table(
        '      id: int\n      "order": text\n      user: text\n      MixedCase: int\n'
        '      "with space": text\n      \'quote"inside\': text\n      "ключ": text\n'
        '      "SELECT * FROM x; --": text\n',
        extra="    exclude: [user]\n",
    ).replace("target: public.t", "target: 'My Schema.Order \"Lines\"'")
    table = parse_config(text, "t.yaml", {}).tables[0]
    assert table.target_schema == "My Schema"
    assert table.target_table == 'Order "Lines"'
    names = [c.name for c in table.replicated_columns]
    assert names == [
        "id",
        "order",
        "MixedCase",
        "with space",
        'quote"inside',
        "ключ",
        "SELECT * FROM x; --",
    ]


def test_yaml_boolean_and_null_words_stay_column_names() -> None:
    table = parse_config(
        one_table(
            "      id: int\n      on: text\n      yes: int\n      null: text\n      ~: int\n"
        ),
        "t.yaml",
        {},
    ).tables[0]
    assert [c.name for c in table.columns] == ["id", "on", "yes", "null", "~"]


def test_identifier_of_exactly_63_bytes_is_accepted() -> None:
    name = "é" * 31 + "x"  # 63 bytes in UTF-8
    table = parse_config(one_table(f"      id: int\n      {name}: text\n"), "t.yaml", {}).tables[0]
    assert table.column(name).name == name


def test_columns_as_list_and_as_mapping_are_equivalent() -> None:
    as_mapping = parse_config(
        one_table("      id: int\n      total: {type: decimal, target_type: 'numeric(38, 10)'}\n"),
        "a.yaml",
        {},
    )
    as_list = parse_config(
        one_table(
            "      - {name: id, type: int}\n"
            "      - {name: total, type: decimal, target_type: 'numeric(38, 10)'}\n"
        ),
        "b.yaml",
        {},
    )
    assert as_mapping.tables == as_list.tables
    assert as_list.tables[0].column("total").target_type == "numeric(38, 10)"


def test_interpolated_values_cannot_change_the_yaml_structure() -> None:
    text = one_table("      id: int\n", extra="    description: ${DESC}\n")
    config = parse_config(text, "t.yaml", {"DESC": "a: b\n  - c # d"})
    assert config.tables[0].description == "a: b\n  - c # d"


def test_plain_references_resolve_to_the_type_of_their_value() -> None:
    text = "defaults:\n  slices: ${SLICES}\n" + one_table("      id: int\n")
    assert parse_config(text, "t.yaml", {"SLICES": "32"}).defaults.slices == 32


def test_references_in_comments_are_ignored() -> None:
    text = "# uses ${NOT_SET_ANYWHERE}\n" + one_table("      id: int\n")
    assert parse_config(text, "t.yaml", {}).tables[0].source == "ks.t"


def test_default_after_colon_dash_is_used_when_unset() -> None:
    text = "connectors:\n  dlq_topic: ${DLQ:-team.dlq}\n" + one_table("      id: int\n")
    config = parse_config(text, "t.yaml", {})
    assert config.connectors.dlq_topic == "team.dlq"
    assert config.dlq_topic_for(config.tables[0]) == "team.dlq.ks.t"


def test_secret_from_environment_is_accepted_and_literal_is_not() -> None:
    ok = "scylla:\n  password: ${PW}\n" + one_table("      id: int\n")
    assert parse_config(ok, "t.yaml", {"PW": "x"}).scylla.password == "x"
    literal = "scylla:\n  password: 'prefix${PW}'\n" + one_table("      id: int\n")
    with pytest.raises(ConfigError, match=r"t.yaml:2: scylla.password is a secret"):
        parse_config(literal, "t.yaml", {"PW": "x"})


def test_derived_names_and_defaults() -> None:
    text = "connectors: {topic_prefix: prod, sink_name_prefix: sink}\n" + one_table(
        "      id: int\n      ck: text\n      v: double\n      secret: text\n",
        keys="partition_key: [id]\n    clustering_key: [ck]",
        extra="    mask: {secret: redact}\n    tolerances: {timestamp_precision: us}\n",
    )
    config = parse_config(text, "t.yaml", {})
    table = config.table("ks.t")
    assert config.topic_for(table) == "prod.ks.t"
    assert config.sink_name_for(table) == "sink-ks-t"
    assert config.defaults.version_column == DEFAULT_VERSION_COLUMN
    assert table.primary_key == ("id", "ck")
    assert [c.name for c in table.compared_columns] == ["v"]
    assert config.tolerances_for(table).timestamp_precision is TimestampPrecision.MICROSECONDS
    assert config.slices_for(table) == config.defaults.slices


def test_unknown_table_lookup_lists_declared_tables() -> None:
    config = parse_config(one_table("      id: int\n"), "t.yaml", {})
    with pytest.raises(ConfigError, match=r"'ks\.nope' is not declared; declared tables: ks\.t"):
        config.table("ks.nope")


def test_load_config_reads_the_path_from_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(one_table("      id: int\n"), encoding="utf-8")
    monkeypatch.setenv("CDC_PIPELINE_CONFIG", str(path))
    assert load_config(environ={}).tables[0].source == "ks.t"
