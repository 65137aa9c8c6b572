"""The Scylla CDC source connector's Kafka messages, built from rows: the source emulator.

The devstack's Cassandra has no Scylla CDC log, so tests and the demo produce what
the connector would (advanced output format, ``cdc.include.after=full``, primary
key in the Kafka key and in the row images, JsonConverter with schemas):

* key: a struct of the primary key (partition key columns, then clustering),
  also placed in the row images (``cdc.include.primary-key.placement`` =
  ``kafka-key,payload-after,payload-before``, the connector's default);
* value: the Debezium envelope ``{source, before, after, op, ts_ms, transaction,
  ts_us, ts_ns}``; ``source`` carries ``ts_ms``/``ts_us`` of the write, ``db``,
  ``keyspace_name``, ``table_name``; values are plain (not cell-wrapped).

Connect types per CQL type follow the connector: text/ascii → string; int types →
int8/16/32/64; varint, decimal, uuid, timeuuid, inet, duration → string; float →
float; double → double; blob → bytes; timestamp → Connect Timestamp (epoch ms);
date → Connect Date (days); time → int64 ns; list/set → array; map → array of
``{key, value}`` structs; tuple → struct ``tuple_member_<i>``; UDT → struct.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.rows.connector_form import connector_value

CONNECTOR_VERSION = "2.0.3"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NANOS_PER_US = 1000

Operation = Literal["c", "u", "d"]
JsonSchema = dict[str, Any]

_SIMPLE = {
    "ascii": "string",
    "text": "string",
    "varchar": "string",
    "tinyint": "int8",
    "smallint": "int16",
    "int": "int32",
    "bigint": "int64",
    "counter": "int64",
    "varint": "string",
    "decimal": "string",
    "uuid": "string",
    "timeuuid": "string",
    "inet": "string",
    "duration": "string",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "blob": "bytes",
    "time": "int64",
}


@dataclass(frozen=True)
class CdcMessage:
    """One Kafka record as the connector would produce it."""

    key: bytes
    value: bytes


class ScyllaCdcEnvelope:
    """Builds the connector's messages for one declared table."""

    def __init__(self, config: PipelineConfig, table: TableSpec) -> None:
        self.config = config
        self.table = table
        self.prefix = config.connectors.topic_prefix
        self.topic = config.topic_for(table)
        self._types = {c.name: c.cql_type for c in table.columns}
        self._key_columns = table.partition_key + table.clustering_key
        self._row_columns = [c.name for c in table.columns]
        key_fields = [self._field(name, self._types[name]) for name in self._key_columns]
        self.key_schema: JsonSchema = {
            "type": "struct",
            "optional": False,
            "name": f"{self._schema_prefix}.Key",
            "fields": key_fields,
        }
        row_fields = [self._field(name, self._types[name]) for name in self._row_columns]
        self._row_schema = {"type": "struct", "optional": True, "fields": row_fields}
        self.value_schema: JsonSchema = {
            "type": "struct",
            "optional": False,
            "name": f"{self._schema_prefix}.Envelope",
            "fields": [
                {**self._source_schema(), "field": "source"},
                {**self._row_schema, "name": f"{self._schema_prefix}.Before", "field": "before"},
                {**self._row_schema, "name": f"{self._schema_prefix}.After", "field": "after"},
                {"type": "string", "optional": True, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                {
                    "type": "struct",
                    "optional": True,
                    "name": "event.block",
                    "version": 1,
                    "field": "transaction",
                    "fields": [
                        {"type": "string", "optional": False, "field": "id"},
                        {"type": "int64", "optional": False, "field": "total_order"},
                        {"type": "int64", "optional": False, "field": "data_collection_order"},
                    ],
                },
                {"type": "int64", "optional": True, "field": "ts_us"},
                {"type": "int64", "optional": True, "field": "ts_ns"},
            ],
        }

    @property
    def _schema_prefix(self) -> str:
        return f"{self.prefix}.{self.table.keyspace}.{self.table.table}"

    # --- messages -----------------------------------------------------------------
    def upsert(
        self, row: Mapping[str, object], write_time_us: int, op: Operation = "c"
    ) -> CdcMessage:
        """An INSERT (``c``) or UPDATE (``u``) carrying the full post-image ``row``."""
        missing = [c for c in self._key_columns if row.get(c) is None]
        if missing:
            raise ConfigError(
                f"{self.table.source}: a change event needs every primary-key column; {missing} "
                "are missing or null"
            )
        after = {name: self.payload_value(name, row.get(name)) for name in self._row_columns}
        return self._message(row, op, before=None, after=after, write_time_us=write_time_us)

    def delete(self, key: Mapping[str, object], write_time_us: int) -> CdcMessage:
        """A row DELETE: no post-image; ``before`` carries the primary key (placement
        ``payload-before``) with every other column null, as without pre-images."""
        before = {name: None for name in self._row_columns}
        before.update({name: self.payload_value(name, key.get(name)) for name in self._key_columns})
        return self._message(key, "d", before=before, after=None, write_time_us=write_time_us)

    def _message(
        self,
        row: Mapping[str, object],
        op: Operation,
        before: Mapping[str, object] | None,
        after: Mapping[str, object] | None,
        write_time_us: int,
    ) -> CdcMessage:
        key_payload = {name: self.payload_value(name, row.get(name)) for name in self._key_columns}
        now_us = int((dt.datetime.now(dt.UTC) - EPOCH).total_seconds() * 1_000_000)
        value_payload = {
            "source": {
                "version": CONNECTOR_VERSION,
                "connector": "scylla",
                "name": self.prefix,
                "ts_ms": write_time_us // 1000,
                "ts_us": write_time_us,
                "snapshot": "false",
                "db": self.table.keyspace,
                "keyspace_name": self.table.keyspace,
                "table_name": self.table.table,
            },
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": now_us // 1000,
            "transaction": None,
            "ts_us": now_us,
            "ts_ns": now_us * NANOS_PER_US,
        }
        return CdcMessage(
            key=_dumps({"schema": self.key_schema, "payload": key_payload}),
            value=_dumps({"schema": self.value_schema, "payload": value_payload}),
        )

    # --- schema -------------------------------------------------------------------
    def _source_schema(self) -> JsonSchema:
        def string(name: str) -> JsonSchema:
            return {"type": "string", "optional": False, "field": name}

        return {
            "type": "struct",
            "optional": False,
            "name": "com.scylladb.cdc.debezium.connector",
            "fields": [
                string("version"),
                string("connector"),
                string("name"),
                {"type": "int64", "optional": False, "field": "ts_ms"},
                {"type": "int64", "optional": False, "field": "ts_us"},
                {
                    "type": "string",
                    "optional": True,
                    "name": "io.debezium.data.Enum",
                    "version": 1,
                    "parameters": {"allowed": "true,last,false"},
                    "default": "false",
                    "field": "snapshot",
                },
                string("db"),
                string("keyspace_name"),
                string("table_name"),
            ],
        }

    def _field(self, name: str, cql: CqlType) -> JsonSchema:
        return {**self.type_schema(cql, f"{self._schema_prefix}.{name}"), "field": name}

    def type_schema(self, cql: CqlType, name_hint: str) -> JsonSchema:
        if cql.name in _SIMPLE:
            return {"type": _SIMPLE[cql.name], "optional": True}
        if cql.name == "timestamp":
            return {
                "type": "int64",
                "optional": True,
                "name": "org.apache.kafka.connect.data.Timestamp",
                "version": 1,
            }
        if cql.name == "date":
            return {
                "type": "int32",
                "optional": True,
                "name": "org.apache.kafka.connect.data.Date",
                "version": 1,
            }
        if cql.name in ("list", "set"):
            return {
                "type": "array",
                "optional": True,
                "items": self.type_schema(cql.params[0], f"{name_hint}.element"),
            }
        if cql.name == "map":
            return {
                "type": "array",
                "optional": True,
                "items": {
                    "type": "struct",
                    "optional": True,
                    "name": f"{name_hint}.Entry",
                    "fields": [
                        {**self.type_schema(cql.params[0], f"{name_hint}.key"), "field": "key"},
                        {**self.type_schema(cql.params[1], f"{name_hint}.value"), "field": "value"},
                    ],
                },
            }
        if cql.name == "tuple":
            return {
                "type": "struct",
                "optional": True,
                "name": f"{name_hint}.Tuple",
                "fields": [
                    {**self.type_schema(p, f"{name_hint}.{i}"), "field": f"tuple_member_{i}"}
                    for i, p in enumerate(cql.params)
                ],
            }
        if cql.name == "udt":
            fields = self._udt_fields(cql)
            return {
                "type": "struct",
                "optional": True,
                "name": f"{name_hint}.{cql.udt_name}",
                "fields": [
                    {**self.type_schema(t, f"{name_hint}.{f}"), "field": f} for f, t in fields
                ],
            }
        raise ConfigError(f"{self.table.source}: no Connect schema for CQL type {cql}")

    def _udt_fields(self, cql: CqlType) -> list[tuple[str, CqlType]]:
        fields = self.config.user_types.get(cql.udt_name or "")
        if fields is None:
            raise ConfigError(f"user type {cql.udt_name!r} is not declared under user_types")
        return [(name, parse_cql_type(text)) for name, text in fields.items()]

    # --- values -------------------------------------------------------------------
    def payload_value(self, column: str, value: object) -> Any:
        return self.convert(self._types[column], value)

    def convert(self, cql: CqlType, value: object) -> Any:
        """A Python value (as written with cassandra-driver) in the connector's JSON form."""
        return connector_value(cql, value, self.config.user_types, self.table.source)


def _dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
