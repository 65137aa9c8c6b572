"""Valid declarations: the example file, hostile-but-legal names, interpolation and the derived names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cdc_pipelines import config as config_module
from cdc_pipelines.config import (
    CANDIDATE_COLUMNS,
    DEFAULT_VERSION_COLUMN,
    INDEX_COLUMNS,
    PG_IDENTIFIER_MAX_BYTES,
    VERIFY_POSITION_COLUMN,
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
    assert [t.source for t in example.tables] == [
        "demo.orders",
        "demo.all_types",
        "demo.cdc_canary",
    ]
    orders = example.table("demo.orders")
    assert orders.partition_key == ("region", "CustomerId")
    assert orders.clustering_key == ("placed_at", "order")
    assert orders.mask == {"email": MaskMode.HASH}
    assert "internal_notes" not in [c.name for c in orders.replicated_columns]
    assert {"user", "order", "CustomerId"} <= {c.name for c in orders.columns}
    assert example.lag_slo_for(orders).max_seconds == 30
    assert example.slices_for(orders) == 8
    assert len(orders.expectations) >= 5


def test_example_declares_the_canary_emulated_only_when_the_devstack_says_so(
    example: PipelineConfig,
) -> None:
    canary = example.table("demo.cdc_canary").canary
    assert canary is not None
    assert (canary.key, canary.column, canary.interval_s, canary.timeout_s) == (
        "canary",
        "written_at_us",
        60,
        60.0,
    )
    assert canary.emulate_cdc is False
    devstack = load_config(EXAMPLE, {"CDC_EMULATED_CDC": "true"}).table("demo.cdc_canary")
    assert devstack.canary is not None and devstack.canary.emulate_cdc is True


CANARY_COLUMNS = "      id: text\n      written_at_us: bigint\n"


@pytest.mark.parametrize(
    ("columns", "keys", "canary", "message"),
    [
        (CANARY_COLUMNS, "partition_key: [id]", "{}", None),
        (
            "      id: int\n      written_at_us: bigint\n",
            "partition_key: [id]",
            "{}",
            "key column 'id' must be text",
        ),
        (
            CANARY_COLUMNS + "      c: int\n",
            "partition_key: [id]\n    clustering_key: [c]",
            "{}",
            "exactly one key column",
        ),
        (CANARY_COLUMNS, "partition_key: [id]", "{column: at}", "names undeclared column 'at'"),
        (
            "      id: text\n      written_at_us: timestamp\n",
            "partition_key: [id]",
            "{}",
            "must be a bigint",
        ),
        (CANARY_COLUMNS, "partition_key: [id]", "{interval_s: 1}", "greater than or equal"),
    ],
)
def test_a_canary_table_has_a_text_key_and_a_bigint_column(
    columns: str, keys: str, canary: str, message: str | None
) -> None:
    text = one_table(columns, keys=keys, extra=f"    canary: {canary}\n")
    if message is None:
        spec = parse_config(text, "p.yaml").tables[0].canary
        assert spec is not None and spec.key == "canary"
        return
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "p.yaml")


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


def test_names_that_only_look_risky_stay_accepted() -> None:
    # Every name is quoted in CQL, SQL and the sink, so case-only twins are two columns; the
    # reconciliation's own column names only clash where it adds them (kind next to keys,
    # _token in the target index, a target re-read's position next to the version column).
    text = one_table(
        "      id: int\n      Status: text\n      status: text\n      kind: text\n"
        '      _cdc_verify_position: int\n      _token: text\n      "pct%": text\n'
        '      "Mixed Case": text\n      naïve_ключ: text\n      "nbsp\\u00a0inside": text\n'
        '      "می\\u200cخواهم": text\n      \'quote"inside\': text\n',
        extra="    exclude: [_token]\n",
    )
    table = parse_config(text, "t.yaml", {}).tables[0]
    assert [c.name for c in table.columns] == [
        "id",
        "Status",
        "status",
        "kind",
        "_cdc_verify_position",
        "_token",
        "pct%",
        "Mixed Case",
        "naïve_ключ",
        "nbsp\u00a0inside",
        "می\u200cخواهم",  # ZWNJ between letters: Persian spelling needs it
        'quote"inside',
    ]


def test_the_reserved_names_are_the_ones_the_reconciliation_uses() -> None:
    from cdc_pipelines.postgres.key_reads import POSITION_COLUMN
    from cdc_pipelines.postgres.target_index import TOKEN_COLUMN
    from cdc_pipelines.reconcile.diff import DIFFERING_COLUMNS, SOURCE_VALUES, TARGET_VALUES
    from cdc_pipelines.reconcile.diff_step import DIFFERING_COLUMN, KIND_COLUMN
    from cdc_pipelines.rows.canonical import ROW_HASH_COLUMN

    assert {ROW_HASH_COLUMN, TOKEN_COLUMN} == INDEX_COLUMNS
    assert {KIND_COLUMN, DIFFERING_COLUMN, DIFFERING_COLUMNS, SOURCE_VALUES, TARGET_VALUES} == (
        CANDIDATE_COLUMNS
    )
    assert POSITION_COLUMN == VERIFY_POSITION_COLUMN


def test_the_protocol_version_is_4_unless_declared() -> None:
    assert parse_config(one_table("      id: int\n"), "t.yaml", {}).scylla.protocol_version == 4
    declared = "scylla:\n  protocol_version: ${PROTOCOL:-5}\n" + one_table("      id: int\n")
    assert parse_config(declared, "t.yaml", {}).scylla.protocol_version == 5
    assert parse_config(declared, "t.yaml", {"PROTOCOL": "3"}).scylla.protocol_version == 3


def large_declaration(tables: int, columns: int) -> str:
    parts = ["version: 1\ndefaults:\n  tolerances: &strict {float_abs: 0.0001}\ntables:\n"]
    for t in range(tables):
        parts.append(
            f"  - source: ks{t % 7}.table_{t}\n    target: schema_{t % 7}.table_{t}\n"
            "    partition_key: [id, region]\n    clustering_key: [line]\n"
            "    tolerances: *strict\n"
            "    columns:\n      id: int\n      region: text\n      line: bigint\n"
            + "".join(
                f"      column_{c}: {('text', 'decimal', 'map<text, int>', 'timestamp')[c % 4]}\n"
                for c in range(columns)
            )
            + "    exclude: [column_0]\n    mask: {column_4: hash}\n"
            "    expectations: [{kind: not_null, column: column_1}]\n"
        )
    return "".join(parts)


def test_a_declaration_of_2000_tables_loads_with_its_aliases() -> None:
    config = parse_config(large_declaration(2000, 20), "large.yaml", {})
    assert len(config.tables) == 2000
    assert config.tables[1999].source == "ks4.table_1999"
    assert len(config.tables[1999].columns) == 23
    assert {t.tolerances for t in config.tables} == {config.defaults.tolerances}


def test_merge_keys_and_aliases_of_env_references_resolve_like_the_text_they_stand_for() -> None:
    declared = one_table("      id: int\n", extra="    description: &pw ${PW}\n") + (
        "scylla:\n  <<: {consistency: QUORUM, fetch_size: 500}\n  password: *pw\n"
    )
    config = parse_config(declared, "t.yaml", {"PW": "s3cret"})
    assert config.scylla.password == "s3cret"
    assert (config.scylla.consistency, config.scylla.fetch_size) == ("QUORUM", 500)
    literal = declared.replace("description: &pw ${PW}", "description: &pw hunter2")
    with pytest.raises(ConfigError, match=r"scylla.password is a secret"):
        parse_config(literal, "t.yaml", {})
    merged = declared.replace("<<: {consistency: QUORUM, fetch_size: 500}", "<<: {password: x}")
    with pytest.raises(ConfigError, match=r"scylla.password is a secret"):
        parse_config(merged.replace("  password: *pw\n", ""), "t.yaml", {"PW": "s3cret"})


def test_the_pure_python_parser_reads_the_example_like_libyaml(
    monkeypatch: pytest.MonkeyPatch, example: PipelineConfig
) -> None:
    monkeypatch.setattr(config_module, "_YAML_LOADER", yaml.SafeLoader)
    assert load_config(EXAMPLE, {}) == example
    with pytest.raises(ConfigError, match=r"t.yaml:65: the document nests more than 64"):
        parse_config("".join("  " * i + f"k{i}:\n" for i in range(100)) + "x\n", "t.yaml", {})


# Names made of visible characters (letters in any script, digits, punctuation, symbols and
# spaces), short enough for PostgreSQL; the index's own column names are refused elsewhere.
VISIBLE_NAMES = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"),
        blacklist_characters='"',
    ),
    min_size=1,
    max_size=12,
).filter(
    lambda n: len(n.encode()) <= PG_IDENTIFIER_MAX_BYTES and n != "id" and n not in INDEX_COLUMNS
)
INVISIBLE = st.characters(
    whitelist_categories=("Cc", "Cf", "Co", "Zl", "Zp"),
    blacklist_characters="\x00\u200c\u200d",
)


def yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar of ``text``: printable characters as they are, others
    escaped (YAML reads a raw control or line-separator character differently)."""
    return (
        '"'
        + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}" for c in text)
        + '"'
    )


def column_declaration(name: str) -> str:
    return one_table(f"      id: int\n      {yaml_quoted(name)}: text\n")


@given(name=VISIBLE_NAMES)
def test_a_visible_name_is_accepted_and_kept_exactly(name: str) -> None:
    table = parse_config(column_declaration(name), "t.yaml", {}).tables[0]
    assert [c.name for c in table.columns] == ["id", name]


@given(name=VISIBLE_NAMES, hidden=INVISIBLE, at=st.integers(min_value=0))
def test_a_name_holding_an_invisible_character_is_refused_with_its_code_point(
    name: str, hidden: str, at: int
) -> None:
    position = at % (len(name) + 1)
    tainted = name[:position] + hidden + name[position:]
    with pytest.raises(ConfigError) as caught:
        parse_config(column_declaration(tainted), "t.yaml", {})
    assert f"U+{ord(hidden):04X}" in str(caught.value)
    assert "invisible" in str(caught.value)
