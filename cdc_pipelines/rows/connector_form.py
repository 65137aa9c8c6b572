"""A row's values in the Scylla CDC source connector's JSON form.

What the connector puts in a change event, and so what the JDBC sink writes into a
``jsonb`` column: maps as ``[{"key", "value"}]``, tuples as ``{"tuple_member_<i>"}``,
blobs base64, timestamps epoch ms, dates epoch days, times ns. The emulated source
produces events with it and repair writes collection columns with it, so repaired rows
look like streamed ones.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ConfigError

# CQL scalars the connector sends as a Connect STRING.
STRING_CARRIED = frozenset(
    {"text", "ascii", "varchar", "uuid", "timeuuid", "varint", "decimal", "inet", "duration"}
)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EPOCH_DATE = dt.date(1970, 1, 1)


def connector_value(
    cql: CqlType, value: object, user_types: Mapping[str, Mapping[str, str]], table: str = ""
) -> Any:
    """A driver value in the connector's JSON form (what the sink writes for jsonb columns:
    maps as ``[{"key", "value"}]``, tuples as ``{"tuple_member_<i>"}``, blobs base64,
    timestamps epoch ms, dates epoch days, times ns)."""
    if value is None:
        return None

    def nested(inner: CqlType, item: object) -> Any:
        return connector_value(inner, item, user_types, table)

    name = cql.name
    if name in ("tinyint", "smallint", "int", "bigint", "counter"):
        return int(value)  # type: ignore[call-overload]
    if name in ("float", "double"):
        return float(value)  # type: ignore[arg-type]
    if name == "boolean":
        return bool(value)
    if name in ("ascii", "text", "varchar"):
        return str(value)
    if name == "varint":
        return str(int(value))  # type: ignore[call-overload]
    if name == "decimal":
        return format(Decimal(value), "f") if not isinstance(value, str) else value  # type: ignore[arg-type]
    if name in ("uuid", "timeuuid"):
        return str(uuid.UUID(str(value)))
    if name == "inet":
        return str(ipaddress.ip_address(value))  # type: ignore[arg-type]
    if name == "blob":
        return base64.b64encode(bytes(value)).decode()  # type: ignore[call-overload]
    if name == "timestamp":
        return _epoch_ms(value)
    if name == "date":
        return _epoch_days(value)
    if name == "time":
        return _time_nanos(value)
    if name == "duration":
        return _duration_literal(value)
    if name in ("list", "set"):
        items = sorted(value, key=repr) if name == "set" and isinstance(value, set) else value
        return [nested(cql.params[0], v) for v in items]  # type: ignore[attr-defined]
    if name == "map":
        return [
            {"key": nested(cql.params[0], k), "value": nested(cql.params[1], v)}
            for k, v in value.items()  # type: ignore[attr-defined]
        ]
    if name == "tuple":
        members: Sequence[object] = value  # type: ignore[assignment]
        return {
            f"tuple_member_{i}": nested(p, v)
            for i, (p, v) in enumerate(zip(cql.params, members, strict=True))
        }
    if name == "udt":
        fields = user_types.get(cql.udt_name or "")
        if fields is None:
            raise ConfigError(f"user type {cql.udt_name!r} is not declared under user_types")
        get = value.get if isinstance(value, Mapping) else lambda f: getattr(value, f, None)
        return {f: nested(parse_cql_type(t), get(f)) for f, t in fields.items()}
    raise ConfigError(f"{table}: cannot encode CQL type {cql}")


def _epoch_ms(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        delta = aware - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise TypeError(f"timestamp value {value!r} is not a datetime or epoch milliseconds")


def _epoch_days(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.date):
        return (value - EPOCH_DATE).days
    days_from_epoch = getattr(value, "days_from_epoch", None)
    if isinstance(days_from_epoch, int):
        return days_from_epoch
    raise TypeError(f"date value {value!r} is not a date")


def _time_nanos(value: object) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dt.time):
        seconds = value.hour * 3600 + value.minute * 60 + value.second
        return seconds * 1_000_000_000 + value.microsecond * 1000
    nanos = getattr(value, "nanosecond_time", None)
    if isinstance(nanos, int):
        return nanos
    raise TypeError(f"time value {value!r} is not a time or nanoseconds")


def _duration_literal(value: object) -> str:
    """CQL's duration literal, e.g. ``1mo2d3ns`` (units mo, d, ns; negative as ``-…``)."""
    months = getattr(value, "months", 0)
    days = getattr(value, "days", 0)
    nanos = getattr(value, "nanoseconds", 0)
    if isinstance(value, str):
        return value
    sign = "-" if min(months, days, nanos) < 0 else ""
    months, days, nanos = abs(months), abs(days), abs(nanos)
    parts = [
        f"{months}mo" if months else "",
        f"{days}d" if days else "",
        f"{nanos}ns" if nanos else "",
    ]
    text = "".join(parts) or "0ns"
    return sign + text
