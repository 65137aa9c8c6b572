"""Malformed declarations: each fails with a ConfigError naming the file, the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_pipelines.config import load_config
from cdc_pipelines.errors import ConfigError

VALID = """\
version: 1
user_types:
  address: {street: text, zip: int}
tables:
  - source: shop.orders
    target: public.orders
    partition_key: [id]
    clustering_key: [line]
    columns:
      id: int
      line: int
      total: decimal
      email: text
      home: frozen<address>
    mask: {email: hash}
"""


def variant(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def with_table_lines(*lines: str) -> str:
    return VALID + "".join(f"    {line}\n" for line in lines)


T0 = "tables[0](shop.orders)"

# (id, file text, environment, fragments the message must contain)
CASES: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = [
    (
        "bad-yaml-syntax",
        "tables:\n  - source: [shop.orders\n",
        {},
        ("pipeline.yaml:", "not valid YAML"),
    ),
    (
        "bad-yaml-indentation",
        "tables:\n  - source: shop.orders\n   target: x\n",
        {},
        ("pipeline.yaml:3:", "not valid YAML"),
    ),
    ("not-a-mapping", "- shop.orders\n- shop.lines\n", {}, ("must be a mapping", "got a list")),
    ("empty-file", "# nothing here\n", {}, ("must be a mapping", "an empty file")),
    ("missing-tables", "version: 1\n", {}, ("tables: required field is missing",)),
    ("empty-tables", "tables: []\n", {}, ("tables:", "declare at least one replicated table")),
    (
        "unknown-field-typo",
        variant("    clustering_key:", "    clustering_kye:"),
        {},
        (f"{T0}.clustering_kye", "unknown field 'clustering_kye'", "did you mean 'clustering_key'"),
    ),
    (
        "unknown-top-level-field",
        "defualts: {slices: 4}\n" + VALID,
        {},
        ("defualts", "did you mean 'defaults'"),
    ),
    (
        "bad-cql-type-in-mapping",
        variant("total: decimal", "total: map<int>"),
        {},
        (f"{T0}.columns.total.type", "not a CQL type", "map takes 2 type parameter(s)"),
    ),
    (
        "misspelt-scalar-type",
        variant("total: decimal", "total: decimall"),
        {},
        (f"{T0}.columns.total.type", "'decimall' is not a CQL type", "did you mean 'decimal'"),
    ),
    (
        "unknown-udt",
        variant("home: frozen<address>", "home: frozen<adress_book>"),
        {},
        (f"{T0}.columns.home.type", "user type 'adress_book'", "not declared under user_types"),
    ),
    (
        "udt-field-bad-type",
        variant("street: text", "street: txet<"),
        {},
        ("user_types.address.street", "not a CQL type"),
    ),
    (
        "partition-key-undeclared",
        variant("partition_key: [id]", "partition_key: [idd]"),
        {},
        (f"{T0}.partition_key", "names undeclared column 'idd'", "did you mean 'id'"),
    ),
    (
        "clustering-key-undeclared",
        variant("clustering_key: [line]", "clustering_key: [position]"),
        {},
        (f"{T0}.clustering_key", "undeclared column 'position'"),
    ),
    (
        "no-partition-key",
        variant("partition_key: [id]", "partition_key: []"),
        {},
        (f"{T0}.partition_key", "must name at least one column"),
    ),
    (
        "duplicate-column-in-list",
        "tables:\n  - source: shop.orders\n    target: public.orders\n"
        "    partition_key: [id]\n    columns:\n"
        "      - {name: id, type: int}\n      - {name: id, type: bigint}\n",
        {},
        (f"{T0}.columns[1]", "column 'id' is declared more than once"),
    ),
    (
        "duplicate-column-in-mapping",
        variant("      email: text\n", "      email: text\n      total: int\n"),
        {},
        ("pipeline.yaml:", "key 'total' appears twice", "first on line 12"),
    ),
    (
        "key-column-twice",
        variant("clustering_key: [line]", "clustering_key: [id]"),
        {},
        (f"{T0}.clustering_key", "'id' appears twice in the primary key"),
    ),
    (
        "key-column-excluded",
        with_table_lines("exclude: [line]"),
        {},
        (f"{T0}.exclude", "key column 'line' cannot be excluded"),
    ),
    (
        "key-column-masked",
        variant("mask: {email: hash}", "mask: {id: redact}"),
        {},
        (f"{T0}.mask", "key column 'id' cannot be masked"),
    ),
    (
        "bad-mask-mode",
        variant("mask: {email: hash}", "mask: {email: sha256}"),
        {},
        (f"{T0}.mask.email", "'hash' or 'redact'"),
    ),
    (
        "mask-undeclared-column",
        variant("mask: {email: hash}", "mask: {e_mail: hash}"),
        {},
        (f"{T0}.mask", "undeclared column 'e_mail'", "did you mean 'email'"),
    ),
    (
        "excluded-and-masked",
        with_table_lines("exclude: [email]"),
        {},
        (f"{T0}.mask", "both excluded and masked"),
    ),
    (
        "collection-in-key",
        variant("line: int", "line: list<int>"),
        {},
        (f"{T0}.clustering_key", "key column 'line' has type list<int>", "frozen"),
    ),
    (
        "slices-zero",
        with_table_lines("slices: 0"),
        {},
        (f"{T0}.slices", "greater than or equal to 1"),
    ),
    (
        "slices-boolean",
        with_table_lines("slices: true"),
        {},
        (f"{T0}.slices", "valid integer"),
    ),
    (
        "slices-too-many",
        with_table_lines("slices: 100000"),
        {},
        (f"{T0}.slices", "less than or equal to 4096"),
    ),
    (
        "negative-tolerance",
        with_table_lines("tolerances: {float_abs: -0.5}"),
        {},
        (f"{T0}.tolerances.float_abs", "greater than or equal to 0"),
    ),
    (
        "bad-timestamp-precision",
        "defaults:\n  tolerances: {timestamp_precision: ns}\n" + VALID,
        {},
        ("defaults.tolerances.timestamp_precision", "'s', 'ms' or 'us'"),
    ),
    (
        "duplicate-source-table",
        VALID
        + "  - source: shop.orders\n    target: public.orders_copy\n"
        + "    partition_key: [id]\n    columns: {id: int}\n",
        {},
        ("tables[1](shop.orders).source", "already declared by tables[0]"),
    ),
    (
        "duplicate-target-table",
        VALID
        + "  - source: shop.lines\n    target: public.orders\n"
        + "    partition_key: [id]\n    columns: {id: int}\n",
        {},
        ("tables[1](shop.lines).target", "'public.orders' is already declared"),
    ),
    (
        "source-without-keyspace",
        variant("source: shop.orders", "source: orders"),
        {},
        ("tables[0](orders).source", "'namespace.table'"),
    ),
    (
        "source-with-bad-characters",
        variant("source: shop.orders", "source: shop.order-lines"),
        {},
        ("source", "'order-lines' is not a ScyllaDB name"),
    ),
    (
        "target-name-too-long",
        variant("target: public.orders", "target: public." + "x" * 64),
        {},
        (f"{T0}.target", "64 bytes", "63-byte identifier limit"),
    ),
    (
        "column-name-with-nul",
        variant("      email: text\n", '      "bad\\0name": text\n'),
        {},
        (f"{T0}.columns['bad\\x00name'].name", "NUL character"),
    ),
    (
        "unset-env-var",
        "connectors:\n  sink_connection_url: ${CDC_TEST_JDBC_URL}\n" + VALID,
        {},
        ("pipeline.yaml:2:", "environment variable CDC_TEST_JDBC_URL is not set"),
    ),
    (
        "literal-secret",
        "scylla:\n  username: app\n  password: hunter2\n" + VALID,
        {},
        ("pipeline.yaml:3:", "scylla.password is a secret", "${CDC_SCYLLA_PASSWORD}"),
    ),
    (
        "credentials-in-jdbc-url",
        "connectors:\n  sink_connection_url: jdbc:postgresql://h/db?password=x\n" + VALID,
        {},
        ("connectors.sink_connection_url", "carries credentials"),
    ),
    (
        "expectation-without-column",
        with_table_lines("expectations: [{kind: not_null}]"),
        {},
        (f"{T0}.expectations[0].column", "'not_null' needs a 'column'"),
    ),
    (
        "expectation-between-without-bounds",
        with_table_lines("expectations: [{kind: between, column: total}]"),
        {},
        (f"{T0}.expectations[0].min", "needs 'min' and/or 'max'"),
    ),
    (
        "expectation-min-above-max",
        with_table_lines("expectations: [{kind: between, column: total, min: 9, max: 1}]"),
        {},
        (f"{T0}.expectations[0].min", "greater than 'max'"),
    ),
    (
        "expectation-bad-regex",
        with_table_lines("expectations: [{kind: matches_regex, column: email, regex: '[a-z'}]"),
        {},
        (f"{T0}.expectations[0].regex", "not a valid regular expression"),
    ),
    (
        "expectation-unknown-kind",
        with_table_lines("expectations: [{kind: is_positive, column: total}]"),
        {},
        (f"{T0}.expectations[0].kind", "'not_null'"),
    ),
    (
        "expectation-undeclared-column",
        with_table_lines("expectations: [{kind: unique, column: totl}]"),
        {},
        (f"{T0}.expectations[0].column", "undeclared column 'totl'"),
    ),
    (
        "version-column-clash",
        "defaults: {version_column: total}\n" + VALID,
        {},
        (f"{T0}.columns.total", "has the name of the version column"),
    ),
    (
        "version-column-with-colon",
        "defaults: {version_column: 'v:us'}\n" + VALID,
        {},
        ("defaults.version_column", "contains ':'"),
    ),
    (
        "target-type-injection",
        variant("total: decimal", "total: {type: decimal, target_type: 'numeric; DROP TABLE x'}"),
        {},
        (f"{T0}.columns.total.target_type", "not a plain PostgreSQL type name"),
    ),
    (
        "file-path-without-provider",  # vault is the default now: the file would be ignored
        "connectors:\n  secrets: {path: /run/secrets/connect.properties}\n" + VALID,
        {},
        ("connectors.secrets.provider", "write provider: file"),
    ),
    (
        "vault-without-path",
        "connectors:\n  secrets: {provider: vault, vault_path: ''}\n" + VALID,
        {},
        ("connectors.secrets.vault_path", "provider 'vault' needs"),
    ),
    (
        "heartbeat-zero",
        "connectors: {heartbeat_interval_ms: 0}\n" + VALID,
        {},
        ("connectors.heartbeat_interval_ms", "greater than or equal to 1"),
    ),
    (
        "protocol-version-unknown",
        "scylla: {protocol_version: 6}\n" + VALID,
        {},
        ("scylla.protocol_version", "6 is not a CQL native protocol version", "write 4"),
    ),
    (
        "protocol-version-boolean",
        "scylla: {protocol_version: true}\n" + VALID,
        {},
        ("scylla.protocol_version", "valid integer"),
    ),
    (
        "column-name-with-zero-width-space",
        variant("      email: text\n", '      "email\\u200b": text\n'),
        {},
        (f"{T0}.columns['email\\u200b'].name", "U+200B (ZERO WIDTH SPACE)", "invisible"),
    ),
    (
        "column-name-with-bidi-override",
        variant("      email: text\n", '      "e\\u202email": text\n'),
        {},
        (f"{T0}.columns['e\\u202email'].name", "RIGHT-TO-LEFT OVERRIDE", "remove it"),
    ),
    (
        "column-name-with-tab",
        variant("      email: text\n", '      "e\\tmail": text\n'),
        {},
        (f"{T0}.columns['e\\tmail'].name", "U+0009", "invisible"),
    ),
    (
        "masked-column-with-trailing-space",
        variant("      email: text\n", '      "email ": text\n').replace(
            "mask: {email: hash}", "mask: {'email ': hash}"
        ),
        {},
        (f"{T0}.mask", "'email '", "starts or ends with whitespace", "trim away"),
    ),
    (
        "excluded-column-with-leading-space",
        variant("      email: text\n", '      email: text\n      " note": text\n')
        + "    exclude: [' note']\n",
        {},
        (f"{T0}.exclude", "' note'", "starts or ends with whitespace", "rename the column"),
    ),
    (
        "source-side-expectation-on-a-masked-column",
        with_table_lines("expectations:", "  - {kind: not_null, column: email, side: source}"),
        {},
        (f"{T0}.expectations[0].column", "'email' is masked", "raw values", "side: target"),
    ),
    (
        "source-side-expectation-on-an-excluded-column",
        with_table_lines(
            "exclude: [total]",
            "expectations:",
            "  - {kind: between, column: total, min: 0, side: source}",
        ),
        {},
        (f"{T0}.expectations[0].column", "'total' is excluded", "raw values", "drop"),
    ),
    (
        "secret-with-a-literal-default",
        "scylla: {password: '${CDC_SCYLLA_PASSWORD:-hunter2}'}\n" + VALID,
        {},
        ("pipeline.yaml:1:", "scylla.password is a secret", "default", "CDC_SCYLLA_PASSWORD"),
    ),
    (
        "counter-column",
        variant("      email: text\n", "      email: text\n      views: counter\n"),
        {},
        (f"{T0}.columns.views.type", "is a counter", "cannot enable CDC", "leave this table out"),
    ),
    (
        "column-named-like-the-index-token",
        variant("      email: text\n", "      email: text\n      _token: bigint\n"),
        {},
        (f"{T0}.columns._token", "adds to its target index", "rename the column"),
    ),
    (
        "column-named-like-the-row-hash",
        variant("      email: text\n", "      email: text\n      _cdc_row_hash: bigint\n"),
        {},
        (f"{T0}.columns._cdc_row_hash", "adds to its target index"),
    ),
    (
        "key-column-named-kind",
        variant("clustering_key: [line]", "clustering_key: [kind]").replace(
            "      line: int\n", "      kind: text\n"
        ),
        {},
        (f"{T0}.columns.kind", "key column 'kind'", "discrepancy candidates"),
    ),
    (
        "key-column-named-differing-columns",
        variant("partition_key: [id]", "partition_key: [differing_columns]").replace(
            "      id: int\n", "      differing_columns: int\n"
        ),
        {},
        (f"{T0}.columns.differing_columns", "key column 'differing_columns'"),
    ),
    (
        "version-column-named-like-the-verify-position",
        "defaults: {version_column: _cdc_verify_position}\n" + VALID,
        {},
        ("defaults.version_column", "adds next to the version column"),
    ),
    (
        "version-column-named-like-the-index-token",
        "defaults: {version_column: _token}\n" + VALID,
        {},
        ("defaults.version_column", "'_token'", "choose another name"),
    ),
    (
        "cql-type-nested-too-deep",
        variant("total: decimal", "total: " + "frozen<list<" * 40 + "int" + ">>" * 40),
        {},
        (f"{T0}.columns.total.type", "nests 80 levels deep", "flatter"),
    ),
    (
        "yaml-alias-bomb",
        "".join(
            f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9 if i else ["lol"] * 9) + "]\n"
            for i in range(10)
        )
        + VALID,
        {},
        ("pipeline.yaml:6:", "alias *x4", "more than 100000 nodes", "use fewer aliases"),
    ),
    (
        "yaml-recursive-alias",
        "x: &loop [1, *loop]\n" + VALID,
        {},
        ("pipeline.yaml:1:", "alias *loop refers to a node that contains it"),
    ),
    (
        "yaml-deep-block-nesting",
        "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "leaf\n",
        {},
        ("pipeline.yaml:65:", "nests more than 64 levels deep"),
    ),
    (
        "yaml-deep-flow-nesting",
        "x: " + "[" * 50_000 + "]" * 50_000 + "\n" + VALID,
        {},
        ("pipeline.yaml:1:", "not valid YAML"),
    ),
    (
        "yaml-deep-nesting-through-aliases",
        "".join(
            f"x{i}: &x{i} [[[[[[[[[[" + (f"*x{i - 1}" if i else "1") + "]]]]]]]]]]\n"
            for i in range(10)
        )
        + VALID,
        {},
        ("pipeline.yaml:7:", "nests more than 64 levels deep"),
    ),
    (
        "yaml-second-document",
        VALID + "---\n" + VALID,
        {},
        ("pipeline.yaml:16:", "a second document starts here"),
    ),
]


@pytest.mark.parametrize(
    ("text", "environ", "fragments"),
    [pytest.param(text, env, frags, id=case_id) for case_id, text, env, frags in CASES],
)
def test_malformed_declaration_names_file_field_and_reason(
    tmp_path: Path, text: str, environ: dict[str, str], fragments: tuple[str, ...]
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_there_are_at_least_25_malformed_variants() -> None:
    assert len(CASES) >= 25
    assert len({case_id for case_id, *_ in CASES}) == len(CASES)


def test_the_valid_base_of_the_variants_loads(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_config(path, {}).tables[0].source == "shop.orders"


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"no such file; pass --config PATH or set CDC_PIPELINE_CONFIG"
    ):
        load_config(tmp_path / "absent.yaml", {})


def test_error_exit_code_is_two() -> None:
    assert ConfigError.exit_code == 2
