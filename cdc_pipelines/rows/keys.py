"""Primary keys from canonical Arrow rows back to the values cassandra-driver binds.

The diff works on canonical keys (uuid as 16 bytes, varint and decimal as text,
timestamps in µs, times in ns); re-reading a key on both sides needs it as the driver's
value. A ``time`` key keeps its nanoseconds: it is read from Arrow as an integer, because
``datetime.time`` holds microseconds only, and bound as ``cassandra.util.Time``.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import pyarrow as pa
from cassandra.util import Time

from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.rows.canonical import CanonicalColumn, CanonicalSchema, time_nanos

Key = tuple[object, ...]


def driver_value(value: object, cql: CqlType, column: str) -> object:
    """One canonical key value as the driver binds it."""
    if value is None:
        return None
    name = cql.name
    if name in ("uuid", "timeuuid"):
        return uuid.UUID(bytes=bytes(value)) if isinstance(value, bytes) else uuid.UUID(str(value))
    if name == "varint":
        return int(str(value))
    if name == "decimal":
        return Decimal(str(value))
    if name == "timestamp" and isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if name == "time":
        return Time(time_nanos(value))
    if cql.is_collection or name in ("tuple", "udt"):
        raise ReconcileError(
            f"key column {column!r} is a {cql}: re-reading such keys by value is not "
            "supported; declare a scalar key"
        )
    return value


_CONVERTED_TYPES = frozenset({"uuid", "timeuuid", "varint", "decimal", "timestamp", "time"})
"""Key types whose canonical value :func:`driver_value` rebuilds (others pass through)."""


def driver_keys(keys: pa.Table, schema: CanonicalSchema) -> list[Key]:
    """Every row of ``keys`` (the key columns of canonical rows) as a driver key tuple."""
    columns = [_driver_column(keys, c) for c in schema.key_columns]
    return list(zip(*columns, strict=True))


def _driver_column(keys: pa.Table, column: CanonicalColumn) -> list[object]:
    """One key column's values as the driver binds them, converted a column at a time."""
    values = _python_values(keys, column)
    cql = column.cql_type
    if cql.name in _CONVERTED_TYPES or cql.is_collection or cql.name in ("tuple", "udt"):
        return [driver_value(value, cql, column.name) for value in values]
    return values


def _python_values(keys: pa.Table, column: CanonicalColumn) -> list[object]:
    values = keys.column(column.name)
    if column.cql_type.name == "time":  # to_pylist() would cut nanoseconds to microseconds
        values = values.cast(pa.int64())
    return values.to_pylist()


_PLAIN_KEY_TYPES = frozenset(
    {int, str, bytes, bool, uuid.UUID, Decimal, dt.datetime, dt.date, dt.time, Time}
)
"""Key value types that hash and compare as the key itself (no NaN, no nested values)."""


def key_identity(key: Key) -> object:
    """A key usable as a dict key: lists (frozen collections) as tuples, NaN as a marker.

    A key of plain scalars (the usual case) is its own identity; only keys holding floats,
    collections or other values are rebuilt.
    """
    if all(type(value) in _PLAIN_KEY_TYPES for value in key):
        return key

    def freeze(value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(freeze(v) for v in value)
        if isinstance(value, float) and math.isnan(value):
            return ("NaN",)
        if isinstance(value, dict):
            return tuple(sorted((repr(k), freeze(v)) for k, v in value.items()))
        return value

    return freeze(key)
