"""Drafting a declaration from a real keyspace's system_schema; the draft must load as is."""

from __future__ import annotations

from typing import Any

import pytest

from cdc_pipelines.config import parse_config
from cdc_pipelines.config_draft import draft_declaration
from cdc_pipelines.cqltypes import parse_cql_type
from cdc_pipelines.errors import ConfigError

ALL_SCALARS = [
    "int",
    "bigint",
    "smallint",
    "tinyint",
    "varint",
    "decimal",
    "float",
    "double",
    "boolean",
    "text",
    "ascii",
    "varchar",
    "blob",
    "uuid",
    "timeuuid",
    "timestamp",
    "date",
    "time",
    "duration",
    "inet",
]


def create_schema(session: Any, keyspace: str) -> None:
    session.execute(f"CREATE TYPE {keyspace}.address (street text, zip int)")
    session.execute(
        f'CREATE TABLE {keyspace}.orders (region text, "CustomerId" int, placed_at timestamp, '
        '"order" uuid, "user" text, total decimal, tags set<text>, lines list<frozen<tuple<int, '
        "text>>>, props map<text, int>, home frozen<address>, note text static, "
        'PRIMARY KEY ((region, "CustomerId"), placed_at, "order"))'
    )
    scalar_columns = ", ".join(f"c_{name} {name}" for name in ALL_SCALARS if name != "duration")
    session.execute(
        f"CREATE TABLE {keyspace}.all_types (id int PRIMARY KEY, {scalar_columns}, "
        "c_duration duration)"
    )


def test_draft_of_a_keyspace_loads_and_keeps_keys_and_types(
    cql_session: Any, keyspace: str
) -> None:
    create_schema(cql_session, keyspace)

    draft = draft_declaration(cql_session, keyspace)
    config = parse_config(draft, "draft.yaml", {})

    assert [t.source for t in config.tables] == [f"{keyspace}.all_types", f"{keyspace}.orders"]
    orders = config.table(f"{keyspace}.orders")
    assert orders.target == f"{keyspace}.orders"
    assert orders.partition_key == ("region", "CustomerId")
    assert orders.clustering_key == ("placed_at", "order")
    types = {c.name: c.cql_type for c in orders.columns}
    assert types["tags"] == parse_cql_type("set<text>")
    assert types["props"] == parse_cql_type("map<text, int>")
    assert types["lines"] == parse_cql_type("list<frozen<tuple<int, text>>>")
    assert types["home"].udt_name == "address" and types["home"].frozen
    assert {"user", "note", "total"} <= set(types)
    assert dict(config.user_types["address"]) == {"street": "text", "zip": "int"}
    assert "'note' is a static column" in draft

    all_types = config.table(f"{keyspace}.all_types")
    drafted = {c.name: c.cql_type.name for c in all_types.columns}
    for name in ALL_SCALARS:
        assert drafted[f"c_{name}"] == parse_cql_type(name).name


def test_draft_of_a_missing_keyspace_names_it(cql_session: Any, unique_name: str) -> None:
    with pytest.raises(ConfigError, match=rf"keyspace '{unique_name}' does not exist"):
        draft_declaration(cql_session, unique_name)


def test_draft_of_an_empty_keyspace_says_so(cql_session: Any, keyspace: str) -> None:
    with pytest.raises(ConfigError, match=r"has no tables to replicate"):
        draft_declaration(cql_session, keyspace)
