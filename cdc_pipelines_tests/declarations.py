"""Declarations for tests: the example's table shapes under a test's own names."""

from __future__ import annotations

from collections.abc import Mapping

from cdc_pipelines.config import (
    DEFAULT_VERSION_COLUMN,
    Defaults,
    PipelineConfig,
    TableSpec,
    Tolerances,
    parse_config,
)
from cdc_pipelines.replicated_table import ReplicatedTable, resolve_spec

ALL_TYPES_COLUMNS = """\
      id: int
      region: text
      "order": int
      "Mixed Case": text
      c_bigint: bigint
      c_smallint: smallint
      c_tinyint: tinyint
      c_varint: varint
      c_decimal: decimal
      c_float: float
      c_double: double
      c_boolean: boolean
      c_text: text
      c_ascii: ascii
      c_blob: blob
      c_uuid: uuid
      c_timeuuid: timeuuid
      c_timestamp: timestamp
      c_date: date
      c_time: time
      c_duration: duration
      c_inet: inet
      c_list: list<int>
      c_set: set<text>
      c_list_uuid: list<uuid>
      c_frozen_list: frozen<list<bigint>>
      c_map: map<text, int>
      c_tuple: tuple<int, text, double>
      c_udt: frozen<address>
"""


def all_types_declaration(name: str, slices: int = 4, extra_table: str = "") -> PipelineConfig:
    """A keyspace ``name`` and schema ``name`` with table ``all_types``: every CQL type,
    a composite partition key, a reserved-word clustering key and a mixed-case column."""
    return parse_config(all_types_yaml(name, slices, extra_table), f"<test declaration {name}>")


def all_types_yaml(name: str, slices: int = 4, extra_table: str = "") -> str:
    """The YAML text of :func:`all_types_declaration`."""
    text = f"""\
connectors:
  topic_prefix: {name}
  sink_name_prefix: {name}-sink
  dlq_topic: {name}-dlq
  sink_batch_size: 500
user_types:
  address: {{street: text, zip: int}}
tables:
  - source: {name}.all_types
    target: {name}.all_types
    partition_key: [id, region]
    clustering_key: ["order"]
    slices: {slices}
    tolerances: {{float_abs: 0.0001, timestamp_precision: ms}}
    columns:
{ALL_TYPES_COLUMNS}{extra_table}"""
    return text


def replicated(
    spec: TableSpec,
    *,
    version_column: str = DEFAULT_VERSION_COLUMN,
    user_types: Mapping[str, Mapping[str, str]] | None = None,
    tolerances: Tolerances | None = None,
    slices: int | None = None,
) -> ReplicatedTable:
    """``spec`` resolved as the only table of a declaration with these defaults."""
    defaults = Defaults(version_column=version_column, tolerances=tolerances or Tolerances())
    config = PipelineConfig(defaults=defaults, user_types=user_types or {}, tables=(spec,))
    table = resolve_spec(config, spec)
    return table if slices is None else table.with_slices(slices)
