"""A declared table resolved once: defaults applied, names derived, overrides checked."""

from __future__ import annotations

import pickle

import pytest

from cdc_pipelines.config import MAX_SLICE_COUNT, parse_config
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.replicated_table import resolve, resolve_all

DECLARATION = """
defaults:
  slices: 8
  version_column: _v
  tolerances: {float_abs: 0.5, timestamp_precision: us}
connectors: {topic_prefix: cdc, sink_name_prefix: sink, dlq_topic: dead}
user_types:
  address: {street: text}
tables:
  - source: shop.orders
    target: public.orders
    partition_key: [id]
    columns: {id: int, total: double, at: address}
  - source: shop.items
    target: public.items
    partition_key: [id]
    slices: 3
    tolerances: {float_rel: 0.1}
    lag_slo: {max_messages: 5}
    columns: {id: int}
"""


def test_defaults_and_derived_names_are_resolved_once() -> None:
    config = parse_config(DECLARATION)
    orders, items = resolve_all(config)
    assert (orders.slices, items.slices) == (8, 3)
    assert orders.tolerances.float_abs == 0.5 and items.tolerances.float_rel == 0.1
    assert (orders.lag_slo.max_messages, items.lag_slo.max_messages) == (10_000, 5)
    assert (orders.topic, orders.sink_name, orders.dlq_topic) == (
        "cdc.shop.orders",
        "sink-shop-orders",
        "dead.shop.orders",
    )
    assert orders.version_column == "_v" and orders.canonical.version_column == "_v"
    assert orders.canonical.timestamp_precision == "us"
    assert orders.canonical.udt_fields("address")[0][0] == "street"
    assert resolve(config, "shop.items") == items


def test_an_undeclared_table_lists_the_declared_ones() -> None:
    with pytest.raises(ConfigError, match=r"'shop\.nope' is not declared.*shop\.orders"):
        resolve(parse_config(DECLARATION), "shop.nope")


@pytest.mark.parametrize("count", [0, -3, MAX_SLICE_COUNT + 1, True, 2.5, "4"])
def test_a_slice_override_is_checked_like_the_declaration(count: object) -> None:
    table = resolve(parse_config(DECLARATION), "shop.orders")
    with pytest.raises(ConfigError, match=r"--slices"):
        table.with_slices(count)


def test_a_slice_override_changes_only_the_slices() -> None:
    table = resolve(parse_config(DECLARATION), "shop.orders")
    narrower = table.with_slices(2)
    assert narrower.slices == 2 and table.slices == 8
    assert narrower.canonical == table.canonical and narrower.topic == table.topic


def test_worker_processes_receive_the_table_whole() -> None:
    table = resolve(parse_config(DECLARATION), "shop.orders").with_slices(5)
    assert pickle.loads(pickle.dumps(table)) == table


@pytest.mark.parametrize("level", ["ONE", "LOCAL_ONE"])
def test_deletes_confirmed_by_one_replica_must_be_asked_for(level: str) -> None:
    weak = f"scylla: {{delete_consistency: {level}}}\n" + DECLARATION
    with pytest.raises(ConfigError, match=r"scylla\.delete_consistency.*asks one replica"):
        parse_config(weak)
    allowed = (
        f"scylla: {{delete_consistency: {level}, allow_single_replica_deletes: true}}\n"
        + DECLARATION
    )
    assert resolve(parse_config(allowed), "shop.orders").scylla.delete_consistency == level
    assert resolve(parse_config(DECLARATION), "shop.orders").scylla.delete_consistency == "QUORUM"


def test_the_scylla_password_stays_out_of_printed_settings() -> None:
    text = "scylla: {username: cdc, password: '${CDC_SCYLLA_PASSWORD}'}\n" + DECLARATION
    config = parse_config(text, environ={"CDC_SCYLLA_PASSWORD": "hunter2-secret"})
    table = resolve(config, "shop.orders")
    assert table.scylla.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(table) and "hunter2-secret" not in repr(config)
