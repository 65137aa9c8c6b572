"""The Dagster names of a table: node labels, unique keys, one group, self-explaining partitions."""

from __future__ import annotations

import dagster as dg
import pytest

from cdc_pipelines.config import PipelineConfig
from cdc_pipelines.defs.build import build_definitions
from cdc_pipelines.defs.names import TableNames, table_names
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.ring.slices import token_slices

TWO_KEYSPACES = {
    "version": 1,
    "tables": [
        {
            "source": f"{ks}.orders",
            "target": target,
            "partition_key": ["id"],
            "slices": slices,
            "columns": {"id": "int", "note": "text"},
        }
        for ks, target, slices in (
            ("shop", "shop.orders", 8),
            ("archive", "archive.orders", 16),
        )
    ],
}
SYSTEMS = ("scylla", "kafka", "postgres", "target_index", "reconciliation", "repair")


def keys_of(names: TableNames) -> list[dg.AssetKey]:
    return [
        names.scylla_key,
        names.kafka_key,
        names.postgres_key,
        names.target_index_key,
        names.reconciliation_key,
        names.repair_key,
    ]


@pytest.fixture
def tables() -> tuple[TableNames, ...]:
    return table_names(PipelineConfig.model_validate(TWO_KEYSPACES))


def test_each_node_label_names_its_system_and_table(tables):
    shop = tables[0]
    # The UI labels a node by the last part of its key.
    assert [k.path[-1] for k in keys_of(shop)] == [f"{s}_orders" for s in SYSTEMS]
    assert {tuple(k.path[:2]) for k in keys_of(shop)} == {("shop", "orders")}


def test_tables_of_the_same_name_in_two_keyspaces_get_distinct_keys_and_groups(tables):
    shop, archive = tables
    assert not set(keys_of(shop)) & set(keys_of(archive))
    assert (shop.group, archive.group) == ("shop__orders", "archive__orders")
    defs = build_definitions(PipelineConfig.model_validate(TWO_KEYSPACES))
    graph = defs.resolve_asset_graph()
    for names in tables:
        assert {graph.get(k).group_name for k in keys_of(names)} == {names.group}


def test_a_partition_key_names_its_slice_and_token_range(tables):
    shop = tables[0]
    ranges = token_slices(8)
    assert shop.slices == tuple(f"{s.id}: {s.start} < token <= {s.end}" for s in ranges)
    assert shop.partition_key("03") == "03: -2305843009213693952 < token <= 0"
    assert [shop.slice_id(k) for k in shop.slices] == list(shop.slice_ids)


def test_a_partition_key_of_another_slice_count_is_refused(tables):
    shop, archive = tables  # 8 and 16 slices: both have a slice 01, over different tokens
    with pytest.raises(
        ReconcileError, match=r"is not a partition of shop\.orders's 8 token slices"
    ):
        shop.slice_id(archive.partition_key("01"))
    with pytest.raises(ReconcileError):
        shop.slice_id("01")
