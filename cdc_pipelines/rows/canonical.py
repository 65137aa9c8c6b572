"""Canonical Arrow form: one Arrow type per CQL type, produced identically from both sides.

The source reader hands over cassandra-driver rows, the target reader PostgreSQL COPY text;
both become tables of the schema below, so hashing, joining and tolerant comparison see
exactly the same bytes for the same logical value.

Canonical types (``CanonicalSchema.arrow_schema``)
--------------------------------------------------
======================  ==================================  ================================
CQL type                Arrow type                          canonical value
======================  ==================================  ================================
tinyint/smallint/int    int8 / int16 / int32
bigint, counter         int64
varint                  string                              decimal digits, no leading zeros
decimal                 string                              plain notation, no exponent (1)
float / double          float32 / float64                   NaN kept
boolean                 bool
text, ascii             string                              NULL and '' stay distinct
blob                    binary                              byte-exact
uuid, timeuuid          fixed_size_binary(16)               the 16 bytes (RFC 4122 order)
timestamp               timestamp('us', tz='UTC')           truncated to the precision (2)
date                    date32                              days since 1970-01-01
time                    time64('ns')                        truncated to the precision (2)
duration                string                              ``<months>mo<days>d<nanos>ns`` (2)
inet                    string                              ``ipaddress`` compressed form
list/set/map/tuple/UDT  string                              canonical JSON (3)
version column          int64                               source write time in µs
======================  ==================================  ================================

(1) Compared columns drop trailing fractional zeros (``1.50`` ≡ ``1.5``: numeric equality;
    PostgreSQL ``numeric(p,s)`` pads scales). Key columns keep the scale, because Cassandra
    keys ``1.5`` and ``1.50`` are different partitions with different tokens; a decimal key
    column must therefore be stored as unconstrained ``numeric`` on the target. A key with
    a negative scale (``1E+3``) cannot be stored by PostgreSQL and reads as scale 0.
(2) Compared columns are truncated (floor) to ``Tolerances.timestamp_precision`` (s/ms/us),
    so both sides hash equal when they agree at that precision. Key columns are never
    truncated. ``time`` keys keep nanoseconds, which PostgreSQL ``time`` cannot hold, and a
    sink that rounds (not truncates) nanoseconds to PostgreSQL's microseconds can disagree
    at a precision boundary. Driver ``datetime`` values are rounded to the millisecond
    (Cassandra's resolution): the driver converts through a float and drifts by a few µs
    far from 1970.
(3) ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` of: list →
    array; set → array sorted by each element's canonical JSON text, deduplicated; map →
    object keyed by the key's canonical text (a string key as is, any other key as its
    JSON text), sorted; tuple → array (NULL components as null); UDT → object of every
    declared field. Elements: integers and varints as JSON integers, decimal as its
    canonical string, float/double as numbers (non-finite as "NaN"/"Infinity"/"-Infinity"),
    blob as "0x…" lowercase hex, uuid as lowercase text, timestamp as
    ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, date as ``YYYY-MM-DD``, time as
    ``HH:MM:SS.fffffffff``, inet/duration as above. Elements are compared exactly (no
    float tolerance inside collections).
    Empty collections: Cassandra returns NULL for an empty non-frozen collection, so for a
    non-frozen collection (and a non-frozen UDT whose fields are all NULL) empty ≡ NULL on
    both sides. A frozen collection keeps ``[]``/``{}`` distinct from NULL, as Cassandra does.

Source reader contract (``from_python_rows``)
---------------------------------------------
Rows are sequences ordered like ``CanonicalSchema.column_names``: partition key, clustering
key, compared columns, then the version (int µs, e.g. the max ``WRITETIME`` of the
non-key columns). Values are what cassandra-driver returns with its default row factory
and deserializers: ``int``, ``str``, ``float``, ``bool``, ``bytes``, ``uuid.UUID``,
``decimal.Decimal``, naive-UTC or aware ``datetime``, ``cassandra.util.Date``/``Time``/
``Duration``, ``datetime.date``/``time``, lists, ``SortedSet``, ``OrderedMapSerializedKey``,
tuples and UDT named tuples (fields in the declared order). Integers are also accepted for
timestamp (ms since the epoch), date (days) and time (ns).

Target reader contract (``read_postgres_csv`` / ``from_postgres_text``)
-----------------------------------------------------------------------
Run ``COPY (SELECT <column_names> FROM <table>) TO STDOUT (FORMAT CSV)`` with no header,
in a session configured with ``POSTGRES_SESSION_SETTINGS``, and hand the bytes (or a
binary file object) to ``read_postgres_csv``. Alternatively read the CSV yourself with
every column as string, unquoted empty = NULL and quoted ``""`` = empty string, and call
``from_postgres_text``. Expected target column types and their text: integer types as
digits (tinyint in ``smallint``); varint/decimal as ``numeric``; float as ``real``,
double as ``double precision`` (``NaN``/``Infinity`` accepted); boolean ``t``/``f``;
text; blob as ``bytea`` (hex output ``\\x…``); uuid/timeuuid as ``uuid``; timestamp as
``timestamptz`` (``timestamp`` without zone is read as UTC); date as ``date``; time as
``time``; duration as ``interval`` (ISO 8601 ``P…`` output) or text in the canonical
``<m>mo<d>d<n>ns`` form; inet as ``inet``; collections/tuples/UDTs as ``jsonb``/``json``
(or text holding JSON) whose structure mirrors the CQL type: arrays for list/set/tuple, an
object or an array of ``[key, value]`` pairs for map, an object for a UDT; blob elements as
``0x``/``\\x`` hex or base64, timestamp elements as ISO text or integer ms. The version
column is ``bigint`` µs.

The target index reads typed instead (``postgres.arrow_read``): columns whose PostgreSQL
type maps exactly arrive in their own Arrow types, the others as the text above, and
``from_postgres_columns`` takes both.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import math
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from cdc_pipelines.config import ColumnSpec, TableSpec, Tolerances
from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.rows.mask import masked_type

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
TIME_TYPE = pa.time64("ns")
UUID_TYPE = pa.binary(16)
UUID_BYTES = 16
VERSION_TYPE = pa.int64()
ROW_HASH_COLUMN = "_cdc_row_hash"
JSON_SEPARATORS = (",", ":")

MICROS_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
NANOS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000}
MICROS_PER_MILLI = 1_000
NANOS_PER_MICRO = 1_000
NANOS_PER_SECOND = 1_000_000_000
SECONDS_PER_DAY = 86_400
MONTHS_PER_YEAR = 12
DAYS_PER_WEEK = 7
UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
UNIX_EPOCH_DATE = dt.date(1970, 1, 1)

POSTGRES_SESSION_SETTINGS: Mapping[str, str] = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "bytea_output": "hex",
    "extra_float_digits": "1",
}
"""Session settings the target reader applies before COPY, so text forms are the ones parsed here."""

_FIXED_TYPES: Mapping[str, pa.DataType] = {
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "counter": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "ascii": pa.string(),
    "varint": pa.string(),
    "decimal": pa.string(),
    "blob": pa.binary(),
    "uuid": UUID_TYPE,
    "timeuuid": UUID_TYPE,
    "timestamp": TIMESTAMP_TYPE,
    "date": pa.date32(),
    "time": TIME_TYPE,
    "duration": pa.string(),
    "inet": pa.string(),
}
_JSON_TYPES = frozenset({"list", "set", "map", "tuple", "udt"})
_INTEGER_NAMES = frozenset({"tinyint", "smallint", "int", "bigint", "counter"})
_FLOAT_NAMES = frozenset({"float", "double"})


class ColumnRole(StrEnum):
    PARTITION_KEY = "partition_key"
    CLUSTERING_KEY = "clustering_key"
    COMPARED = "compared"
    VERSION = "version"


def canonical_arrow_type(cql_type: CqlType) -> pa.DataType:
    """The Arrow type both readers produce for a CQL type."""
    if cql_type.name in _JSON_TYPES:
        return pa.string()
    try:
        return _FIXED_TYPES[cql_type.name]
    except KeyError:
        raise ReconcileError(f"CQL type {cql_type} has no canonical Arrow form") from None


@dataclass(frozen=True)
class CanonicalColumn:
    """One column of a canonical table."""

    name: str
    cql_type: CqlType
    role: ColumnRole
    arrow_type: pa.DataType

    @property
    def is_key(self) -> bool:
        return self.role in (ColumnRole.PARTITION_KEY, ColumnRole.CLUSTERING_KEY)


UserTypeFields = tuple[tuple[str, CqlType], ...]


@dataclass(frozen=True)
class CanonicalSchema:
    """The canonical layout of one replicated table: keys, compared columns, version."""

    table: str
    columns: tuple[CanonicalColumn, ...]
    timestamp_precision: str
    user_types: tuple[tuple[str, UserTypeFields], ...] = ()

    @classmethod
    def from_table(
        cls,
        table: TableSpec,
        *,
        version_column: str,
        tolerances: Tolerances | None = None,
        user_types: Mapping[str, Mapping[str, str]] | None = None,
    ) -> CanonicalSchema:
        """Build from the declaration; ``user_types`` is ``PipelineConfig.user_types``."""
        columns = [
            *(_column(table, n, ColumnRole.PARTITION_KEY) for n in table.partition_key),
            *(_column(table, n, ColumnRole.CLUSTERING_KEY) for n in table.clustering_key),
            *(_column(table, c.name, ColumnRole.COMPARED) for c in _compared(table)),
            CanonicalColumn(version_column, CqlType("bigint"), ColumnRole.VERSION, VERSION_TYPE),
        ]
        precision = str((tolerances or Tolerances()).timestamp_precision)
        udts = tuple(
            (name, tuple((f, parse_cql_type(t)) for f, t in fields.items()))
            for name, fields in (user_types or {}).items()
        )
        return cls(table.source, tuple(columns), precision, udts)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        clash = sorted({n for n in names if names.count(n) > 1} | ({ROW_HASH_COLUMN} & set(names)))
        if clash:
            raise ReconcileError(
                f"table {self.table}: column name(s) {clash} are used twice or collide with "
                f"{ROW_HASH_COLUMN!r}; rename the column or the declared version column"
            )
        if self.timestamp_precision not in MICROS_PER_UNIT:
            raise ReconcileError(
                f"table {self.table}: timestamp precision {self.timestamp_precision!r} is not "
                f"one of {sorted(MICROS_PER_UNIT)}"
            )
        if sum(c.role == ColumnRole.VERSION for c in self.columns) != 1:
            raise ReconcileError(f"table {self.table}: exactly one version column is required")

    def _role(self, *roles: ColumnRole) -> tuple[CanonicalColumn, ...]:
        return tuple(c for c in self.columns if c.role in roles)

    @property
    def partition_key(self) -> tuple[CanonicalColumn, ...]:
        return self._role(ColumnRole.PARTITION_KEY)

    @property
    def key_columns(self) -> tuple[CanonicalColumn, ...]:
        return self._role(ColumnRole.PARTITION_KEY, ColumnRole.CLUSTERING_KEY)

    @property
    def compared_columns(self) -> tuple[CanonicalColumn, ...]:
        return self._role(ColumnRole.COMPARED)

    @property
    def version_column(self) -> str:
        return self._role(ColumnRole.VERSION)[0].name

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    def udt_fields(self, name: str | None) -> UserTypeFields:
        for udt, fields in self.user_types:
            if udt == name:
                return fields
        raise ReconcileError(
            f"table {self.table}: user type {name!r} is not declared; add it under user_types"
        )


def _compared(table: TableSpec) -> tuple[ColumnSpec, ...]:
    """Non-key replicated columns, masked ones included: they compare as the mask leaves them."""
    keys = set(table.primary_key)
    return tuple(c for c in table.replicated_columns if c.name not in keys)


def _column(table: TableSpec, name: str, role: ColumnRole) -> CanonicalColumn:
    cql_type = table.column(name).cql_type
    if name in table.mask:
        cql_type = masked_type(cql_type)
    return CanonicalColumn(name, cql_type, role, canonical_arrow_type(cql_type))


# --------------------------------------------------------------------------- numbers as text


def _regex_replace(values: pa.Array, pattern: str, replacement: str) -> pa.Array:
    return pc.replace_substring_regex(values, pattern=pattern, replacement=replacement)


def normalize_decimal_text(values: pa.Array, *, keep_scale: bool) -> pa.Array:
    """Canonical decimal strings from plain-notation numerals (``-0012.3400`` → ``-12.34``)."""
    values = _regex_replace(values, r"^\+", "")
    if not keep_scale:
        values = _regex_replace(values, r"(\.\d*?)0+$", r"\1")
        values = _regex_replace(values, r"\.$", "")
    values = _regex_replace(values, r"^(-?)0+(\d)", r"\1\2")
    values = _regex_replace(values, r"^-(0(\.0*)?)$", r"\1")
    return values


def normalize_varint_text(values: pa.Array) -> pa.Array:
    """Canonical integer strings; a zero fraction (``12.000`` from ``numeric``) is dropped."""
    return normalize_decimal_text(values, keep_scale=False)


_DECIMAL_PATTERN = r"^-?\d+(\.\d+)?$"
_VARINT_PATTERN = r"^-?\d+$"


def _check_pattern(values: pa.Array, pattern: str, column: CanonicalColumn, what: str) -> None:
    matches = pc.match_substring_regex(values, pattern=pattern)
    bad = pc.invert(pc.fill_null(matches, True))
    if pc.any(bad).as_py():
        sample = values.filter(bad)[0].as_py()
        raise ReconcileError(
            f"column {column.name!r} ({column.cql_type}): {sample!r} is not {what}; "
            f"check the target column type against the declaration"
        )


def decimal_plain_text(value: object) -> str:
    """Plain notation (no exponent) of a number; scale kept, to be normalized afterwards."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"{value!r} is not a decimal number")
    number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    if not number.is_finite():
        raise ValueError(f"decimal {value!r} is not finite; Cassandra decimals always are")
    return format(number, "f")


def decimal_canonical(value: object, *, keep_scale: bool) -> str:
    """The canonical decimal string of one number (same result as ``normalize_decimal_text``)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"{value!r} is not a decimal number")
    number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    if not number.is_finite():
        raise ValueError(f"decimal {value!r} is not finite; Cassandra decimals always are")
    if number.is_zero():
        number = abs(number)
    text = format(number if keep_scale else number.normalize(), "f")
    return "0" if number.is_zero() and not keep_scale else text


def _decimal_array(texts: Sequence[object], column: CanonicalColumn) -> pa.Array:
    raw = pa.array(texts, pa.string())
    _check_pattern(raw, _DECIMAL_PATTERN, column, "a plain decimal number")
    return normalize_decimal_text(raw, keep_scale=column.is_key)


# --------------------------------------------------------------------------- scalar elements


def _to_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal | str):
        number = Decimal(str(value).strip())
        if number != number.to_integral_value():
            raise ValueError(f"{value!r} is not an integer")
        return int(number)
    raise TypeError(f"{value!r} is not an integer")


def _to_float(value: object, single: bool) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a boolean, not a number")
    if isinstance(value, int | float | Decimal | str):
        number = float(value)
    else:
        raise TypeError(f"{value!r} is not a number")
    return float(np.float32(number)) if single else number


def _to_uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes) and len(value) == UUID_BYTES:
        return uuid.UUID(bytes=value)
    if isinstance(value, str):
        return uuid.UUID(value)
    raise TypeError(f"{value!r} is not a UUID")


def _datetime_micros(moment: dt.datetime) -> int:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    delta = aware - UNIX_EPOCH
    return (delta.days * SECONDS_PER_DAY + delta.seconds) * 1_000_000 + delta.microseconds


def timestamp_micros(value: object) -> int:
    """µs since the epoch from a timestamp value.

    A ``datetime`` comes from cassandra-driver: naive means UTC, and it is rounded to the
    millisecond, Cassandra's resolution, because the driver converts through a float and
    lands microseconds off for dates far from 1970. An ``int`` is milliseconds; ISO text
    (from the target) is taken exactly.
    """
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a timestamp")
    if isinstance(value, int):
        return value * MICROS_PER_MILLI
    if isinstance(value, str):
        return _datetime_micros(dt.datetime.fromisoformat(value.strip().replace(" ", "T")))
    if isinstance(value, dt.datetime):
        millis = (_datetime_micros(value) + MICROS_PER_MILLI // 2) // MICROS_PER_MILLI
        return millis * MICROS_PER_MILLI
    raise TypeError(f"{value!r} is not a timestamp")


def date_days(value: object) -> int:
    """Days since 1970-01-01 from ``cassandra.util.Date``, ``datetime.date``, ISO text or int."""
    days = getattr(value, "days_from_epoch", None)
    if isinstance(days, int):
        return days
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a date")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = dt.date.fromisoformat(value.strip())
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return (value - UNIX_EPOCH_DATE).days
    raise TypeError(f"{value!r} is not a date")


_TIME_TEXT = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")


def time_nanos(value: object) -> int:
    """ns since midnight from ``cassandra.util.Time``, ``datetime.time``, ``HH:MM:SS.f`` or int."""
    nanos = getattr(value, "nanosecond_time", None)
    if isinstance(nanos, int):
        return nanos
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.time):
        seconds = value.hour * 3600 + value.minute * 60 + value.second
        return seconds * NANOS_PER_SECOND + value.microsecond * NANOS_PER_MICRO
    if isinstance(value, str):
        match = _TIME_TEXT.match(value.strip())
        if match:
            hours, minutes, secs, fraction = match.groups()
            whole = int(hours) * 3600 + int(minutes) * 60 + int(secs)
            return whole * NANOS_PER_SECOND + int((fraction or "0").ljust(9, "0"))
    raise TypeError(f"{value!r} is not a time of day")


_DURATION_TEXT = re.compile(r"^(-?\d+)mo(-?\d+)d(-?\d+)ns$")
# CQL's duration literal (what the connector sends, so what a text target holds): an
# optional sign, then number-unit pairs, zero parts left out (``9mo460187176014ns``).
_CQL_DURATION = re.compile(r"^(-?)((?:\d+(?:mo|ms|us|µs|ns|y|w|d|h|m|s))+)$")
_CQL_DURATION_PART = re.compile(r"(\d+)(mo|ms|us|µs|ns|y|w|d|h|m|s)")
_CQL_DURATION_UNITS: dict[str, tuple[int, int, int]] = {  # (months, days, nanos) per unit
    "y": (MONTHS_PER_YEAR, 0, 0),
    "mo": (1, 0, 0),
    "w": (0, DAYS_PER_WEEK, 0),
    "d": (0, 1, 0),
    "h": (0, 0, 3600 * NANOS_PER_SECOND),
    "m": (0, 0, 60 * NANOS_PER_SECOND),
    "s": (0, 0, NANOS_PER_SECOND),
    "ms": (0, 0, NANOS_PER_SECOND // 1000),
    "us": (0, 0, NANOS_PER_MICRO),
    "µs": (0, 0, NANOS_PER_MICRO),
    "ns": (0, 0, 1),
}
_ISO_INTERVAL = re.compile(
    r"^P(?:(-?\d+)Y)?(?:(-?\d+)M)?(?:(-?\d+)W)?(?:(-?\d+)D)?"
    r"(?:T(?:(-?\d+)H)?(?:(-?\d+)M)?(?:(-?\d+(?:\.\d+)?)S)?)?$"
)


def duration_parts(value: object) -> tuple[int, int, int]:
    """(months, days, nanoseconds) from ``cassandra.util.Duration``, ISO 8601 or canonical text."""
    months = getattr(value, "months", None)
    if isinstance(months, int):
        return months, int(getattr(value, "days", 0)), int(getattr(value, "nanoseconds", 0))
    if isinstance(value, str):
        text = value.strip()
        # A CQL literal's sign covers every part (Cassandra durations never mix signs), so
        # "-1mo1d1ns" is read as a literal before the canonical form ("-1mo-1d-1ns").
        literal = _CQL_DURATION.match(text)
        if literal:
            return _cql_duration_parts(literal[1] == "-", literal[2])
        canonical = _DURATION_TEXT.match(text)
        if canonical:
            return int(canonical[1]), int(canonical[2]), int(canonical[3])
        iso = _ISO_INTERVAL.match(text)
        if iso and text not in ("P", "PT") and not text.endswith("T"):
            years, mons, weeks, days, hours, minutes, seconds = (g or "0" for g in iso.groups())
            nanos = (int(hours) * 3600 + int(minutes) * 60) * NANOS_PER_SECOND + int(
                Decimal(seconds) * NANOS_PER_SECOND
            )
            return (
                int(years) * MONTHS_PER_YEAR + int(mons),
                int(weeks) * DAYS_PER_WEEK + int(days),
                nanos,
            )
    raise TypeError(
        f"{value!r} is not a duration (Duration, ISO 8601 'P…', a CQL literal such as "
        "'1mo2d3ns', or '<m>mo<d>d<n>ns')"
    )


def _cql_duration_parts(negative: bool, pairs: str) -> tuple[int, int, int]:
    months = days = nanos = 0
    for number, unit in _CQL_DURATION_PART.findall(pairs):
        per_months, per_days, per_nanos = _CQL_DURATION_UNITS[unit]
        months += int(number) * per_months
        days += int(number) * per_days
        nanos += int(number) * per_nanos
    sign = -1 if negative else 1
    return sign * months, sign * days, sign * nanos


def duration_text(months: int, days: int, nanos: int, precision: str | None = None) -> str:
    """Canonical duration text; nanoseconds truncated toward zero to ``precision`` if given."""
    if precision is not None:
        unit = NANOS_PER_UNIT[precision]
        nanos = int(math.copysign(abs(nanos) // unit * unit, nanos)) if nanos else 0
    return f"{months}mo{days}d{nanos}ns"


def inet_text(value: object) -> str:
    """Compressed text of an IPv4/IPv6 address; ``/32`` or ``/128`` suffixes are dropped."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value.compressed
    if isinstance(value, bytes):
        return ipaddress.ip_address(value).compressed
    if isinstance(value, str):
        text = value.strip()
        address, _, prefix = text.partition("/")
        parsed = ipaddress.ip_address(address)
        if prefix and int(prefix) != parsed.max_prefixlen:
            raise ValueError(f"{value!r} is a network, not a single address")
        return parsed.compressed
    raise TypeError(f"{value!r} is not an IP address")


def _to_bytes(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:2] in ("0x", "\\x"):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    raise TypeError(f"{value!r} is not binary")


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "t", "f"):
        return value.strip().lower() in ("true", "t")
    raise TypeError(f"{value!r} is not a boolean")


# --------------------------------------------------------------------------- canonical JSON

JsonValue = Any
"""A value of the canonical JSON tree (str, int, float, bool, None, list, dict)."""


def _json_float(number: float) -> JsonValue:
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return number


def json_element(value: object, cql_type: CqlType, schema: CanonicalSchema) -> JsonValue:
    """The canonical JSON value of one element (a driver value or a parsed JSON value)."""
    name = cql_type.name
    if value is None:
        return None
    if name in _INTEGER_NAMES or name == "varint":
        return _to_int(value)
    if name == "decimal":
        return decimal_canonical(value, keep_scale=False)
    if name in _FLOAT_NAMES:
        return _json_float(_to_float(value, name == "float"))
    if name == "boolean":
        return _to_bool(value)
    if name in ("text", "ascii"):
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not text")
        return value
    if name == "blob":
        return "0x" + _to_bytes(value).hex()
    if name in ("uuid", "timeuuid"):
        return str(_to_uuid(value))
    if name == "timestamp":
        moment = UNIX_EPOCH + dt.timedelta(microseconds=timestamp_micros(value))
        # Explicit year width: strftime("%Y") drops the leading zeros of years before 1000.
        return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}.{moment.microsecond:06d}Z"
    if name == "date":
        return (UNIX_EPOCH_DATE + dt.timedelta(days=date_days(value))).isoformat()
    if name == "time":
        nanos = time_nanos(value)
        seconds, fraction = divmod(nanos, NANOS_PER_SECOND)
        hours, rest = divmod(seconds, 3600)
        return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}.{fraction:09d}"
    if name == "duration":
        return duration_text(*duration_parts(value))
    if name == "inet":
        return inet_text(value)
    return _json_container(value, cql_type, schema)


def _element_text(element: JsonValue) -> str:
    return dumps_canonical(element)


def _map_key_text(element: JsonValue) -> str:
    return element if isinstance(element, str) else dumps_canonical(element)


TUPLE_MEMBER_PREFIX = "tuple_member_"


def _json_container(value: object, cql_type: CqlType, schema: CanonicalSchema) -> JsonValue:
    name = cql_type.name
    if isinstance(value, str):
        value = json.loads(value, parse_float=Decimal)
    if name == "list":
        if not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise TypeError(f"{value!r} is not a list")
        return [json_element(v, cql_type.params[0], schema) for v in value]
    if name == "set":
        if not isinstance(value, Iterable) or isinstance(value, Mapping):
            raise TypeError(f"{value!r} is not a set")
        elements = {
            _element_text(e): e
            for e in (json_element(v, cql_type.params[0], schema) for v in value)
        }
        return [elements[text] for text in sorted(elements)]
    if name == "map":
        key_type, value_type = cql_type.params
        pairs: Iterable[Any]
        if isinstance(value, Mapping):
            pairs = value.items()
        elif isinstance(value, Iterable):
            # The source connector's form, carried into jsonb by the sink: [{"key", "value"}].
            pairs = [
                (entry["key"], entry.get("value")) if isinstance(entry, Mapping) else entry
                for entry in value
            ]
        else:
            raise TypeError(f"{value!r} is not a map")
        result: dict[str, JsonValue] = {}
        for key, item in pairs:
            if isinstance(key, str) and key_type.name not in ("text", "ascii", "inet"):
                key = _map_key_from_text(key, key_type)
            key_text = _map_key_text(json_element(key, key_type, schema))
            result[key_text] = json_element(item, value_type, schema)
        return dict(sorted(result.items()))
    if name == "tuple":
        if isinstance(value, Mapping):
            # The source connector's form: {"tuple_member_0": …, "tuple_member_1": …}.
            value = [value.get(f"{TUPLE_MEMBER_PREFIX}{i}") for i in range(len(cql_type.params))]
        items = list(value) if isinstance(value, Iterable) else None
        if items is None or len(items) > len(cql_type.params):
            raise TypeError(f"{value!r} is not a {cql_type}")
        items += [None] * (len(cql_type.params) - len(items))
        return [json_element(v, t, schema) for v, t in zip(items, cql_type.params, strict=True)]
    if name == "udt":
        fields = schema.udt_fields(cql_type.udt_name)
        return {
            f: json_element(v, t, schema)
            for (f, t), v in zip(fields, _udt_values(value, fields), strict=True)
        }
    raise TypeError(f"CQL type {cql_type} has no canonical JSON form")


def _map_key_from_text(text: str, key_type: CqlType) -> object:
    # JSON object keys are always strings; a non-text key type reads its value from the text.
    if key_type.name in _JSON_TYPES:
        return json.loads(text, parse_float=Decimal)
    if key_type.name in _INTEGER_NAMES or key_type.name in ("varint", "decimal"):
        return Decimal(text)
    return text


def _udt_values(value: object, fields: UserTypeFields) -> list[object]:
    if isinstance(value, Mapping):
        unknown = set(value) - {f for f, _ in fields}
        if unknown:
            raise TypeError(f"fields {sorted(unknown)} are not declared for this user type")
        return [value.get(f) for f, _ in fields]
    if isinstance(value, tuple):
        if len(value) > len(fields):
            raise TypeError(f"{value!r} has more fields than the {len(fields)} declared")
        return list(value) + [None] * (len(fields) - len(value))
    if hasattr(value, "__dict__"):
        return [getattr(value, f, None) for f, _ in fields]
    raise TypeError(f"{value!r} is not a user type value")


def dumps_canonical(value: JsonValue) -> str:
    return json.dumps(
        value, sort_keys=True, separators=JSON_SEPARATORS, ensure_ascii=False, allow_nan=False
    )


def _is_empty_json(element: JsonValue, cql_type: CqlType) -> bool:
    if cql_type.name == "udt":
        return isinstance(element, dict) and all(v is None for v in element.values())
    return element in ([], {})


def canonical_json(value: object, cql_type: CqlType, schema: CanonicalSchema) -> str | None:
    """Canonical JSON text of a collection/tuple/UDT value (see the module docstring)."""
    if value is None:
        return None
    element = json_element(value, cql_type, schema)
    if not cql_type.frozen and cql_type.name != "tuple" and _is_empty_json(element, cql_type):
        return None
    return dumps_canonical(element)


# --------------------------------------------------------------------------- driver values


def _convert_each(
    values: Sequence[object], column: CanonicalColumn, convert: Callable[[object], object]
) -> list[object]:
    out: list[object] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        try:
            out.append(convert(value))
        except (TypeError, ValueError, ArithmeticError, InvalidOperation) as exc:
            raise ReconcileError(
                f"column {column.name!r} ({column.cql_type}): cannot read {value!r}: {exc}; "
                f"check that the declared type matches the table"
            ) from None
    return out


# Driver values of these types convert to their canonical Arrow type in C (pa.array);
# anything unexpected falls back to the checked per-value conversion below.
_VECTORIZED_NAMES = frozenset({*_INTEGER_NAMES, *_FLOAT_NAMES, "boolean", "text", "ascii", "blob"})


def _vectorized(values: Sequence[object], arrow_type: pa.DataType) -> pa.Array | None:
    """``pa.array`` in C when every value already has the Python type it expects, else None."""
    try:
        return pa.array(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError, ValueError):
        return None


def _driver_timestamps(values: Sequence[object], column: CanonicalColumn) -> pa.Array | None:
    """Driver datetimes (naive = UTC) as µs rounded to the millisecond, in C; None if mixed."""
    if not all(v is None or isinstance(v, dt.datetime) for v in values):
        return None
    micros = _vectorized(values, pa.timestamp("us"))
    if micros is None:
        return None
    raw = micros.cast(pa.int64())
    mask = np.asarray(raw.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    filled = np.asarray(raw.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    rounded = np.floor_divide(filled + MICROS_PER_MILLI // 2, MICROS_PER_MILLI) * MICROS_PER_MILLI
    return pa.array(rounded, pa.int64(), mask=mask if mask.any() else None)


def _python_column(
    values: Sequence[object], column: CanonicalColumn, schema: CanonicalSchema
) -> pa.Array:
    name = column.cql_type.name
    if name in _VECTORIZED_NAMES:
        fast = _vectorized(values, column.arrow_type)
        if fast is not None:
            return fast
    if name == "timestamp":
        stamps = _driver_timestamps(values, column)
        if stamps is not None:
            return _truncate(stamps.cast(TIMESTAMP_TYPE), column, schema)
    if name in _JSON_TYPES:
        texts = _convert_each(values, column, lambda v: canonical_json(v, column.cql_type, schema))
        return pa.array(texts, pa.string())
    if name in _INTEGER_NAMES:
        return pa.array(_convert_each(values, column, _to_int), column.arrow_type)
    if name == "varint":
        return pa.array(_convert_each(values, column, lambda v: str(_to_int(v))), pa.string())
    if name == "decimal":
        return _decimal_array(_convert_each(values, column, decimal_plain_text), column)
    if name in _FLOAT_NAMES:
        return pa.array(
            _convert_each(values, column, lambda v: _to_float(v, False)), column.arrow_type
        )
    if name == "boolean":
        return pa.array(_convert_each(values, column, _to_bool), pa.bool_())
    if name in ("text", "ascii"):
        return pa.array(_convert_each(values, column, _checked_text), pa.string())
    if name == "blob":
        return pa.array(_convert_each(values, column, _to_bytes), pa.binary())
    if name in ("uuid", "timeuuid"):
        return pa.array(_convert_each(values, column, lambda v: _to_uuid(v).bytes), UUID_TYPE)
    if name == "timestamp":
        micros = pa.array(_convert_each(values, column, timestamp_micros), pa.int64())
        return _truncate(micros.cast(TIMESTAMP_TYPE), column, schema)
    if name == "date":
        return pa.array(_convert_each(values, column, date_days), pa.int32()).cast(pa.date32())
    if name == "time":
        nanos = pa.array(_convert_each(values, column, time_nanos), pa.int64())
        return _truncate(nanos.cast(TIME_TYPE), column, schema)
    if name == "duration":
        precision = None if column.is_key else schema.timestamp_precision
        texts = _convert_each(
            values, column, lambda v: duration_text(*duration_parts(v), precision=precision)
        )
        return pa.array(texts, pa.string())
    if name == "inet":
        return pa.array(_convert_each(values, column, inet_text), pa.string())
    raise ReconcileError(f"column {column.name!r}: CQL type {column.cql_type} is not supported")


def _checked_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


def from_python_rows(rows: Iterable[Sequence[object]], schema: CanonicalSchema) -> pa.RecordBatch:
    """A canonical batch from driver rows ordered like ``schema.column_names``."""
    materialized = [tuple(row) for row in rows]
    width = len(schema.columns)
    for row in materialized:
        if len(row) != width:
            raise ReconcileError(
                f"table {schema.table}: a source row has {len(row)} values, expected {width} "
                f"({', '.join(schema.column_names)}); select the columns in that order"
            )
    columns = list(zip(*materialized, strict=True)) if materialized else [()] * width
    arrays = [
        _python_column(list(values), column, schema)
        for values, column in zip(columns, schema.columns, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema)


# --------------------------------------------------------------------------- typed tables


def _truncate(values: pa.Array, column: CanonicalColumn, schema: CanonicalSchema) -> pa.Array:
    """Floor timestamps/times of a compared column to the declared precision."""
    if column.is_key or column.role == ColumnRole.VERSION:
        return values
    if column.cql_type.name == "timestamp":
        unit = MICROS_PER_UNIT[schema.timestamp_precision]
        storage_type, target_type = pa.int64(), TIMESTAMP_TYPE
    elif column.cql_type.name == "time":
        unit = NANOS_PER_UNIT[schema.timestamp_precision]
        storage_type, target_type = pa.int64(), TIME_TYPE
    else:
        return values
    if unit == 1:
        return values
    raw = pc.fill_null(values.cast(storage_type), 0).to_numpy(zero_copy_only=False)
    floored = np.floor_divide(raw, unit) * unit
    storage = pa.Array.from_buffers(
        storage_type, len(values), [_validity(values), pa.py_buffer(floored.tobytes())]
    )
    return storage.cast(target_type)


def normalize(table: pa.Table, schema: CanonicalSchema) -> pa.Table:
    """Conform an already-typed table: select the canonical columns, cast, truncate to precision.

    Idempotent; use it on tables that did not come from this module's converters.
    """
    missing = [n for n in schema.column_names if n not in table.column_names]
    if missing:
        raise ReconcileError(
            f"table {schema.table}: columns {missing} are missing from the Arrow table; "
            f"read every key, compared and version column"
        )
    arrays = []
    for column in schema.columns:
        chunks = [_conform(c, column, schema) for c in table.column(column.name).chunks]
        arrays.append(pa.chunked_array(chunks, column.arrow_type))
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema)


def _conform(values: pa.Array, column: CanonicalColumn, schema: CanonicalSchema) -> pa.Array:
    """Cast exactly to the canonical type (an integer that does not fit is an error), then
    floor a compared timestamp or time to the declared precision."""
    if values.type != column.arrow_type:
        try:
            values = values.cast(column.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ReconcileError(
                f"table {schema.table}: column {column.name!r} ({column.cql_type}) has Arrow "
                f"type {values.type}, which does not convert to {column.arrow_type}: {exc}; "
                "check the column's type against the declaration"
            ) from None
    return _truncate(values, column, schema)


# --------------------------------------------------------------------------- PostgreSQL text

_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
for _offset, _chars in ((0, "0123456789"), (10, "abcdef"), (10, "ABCDEF")):
    for _i, _c in enumerate(_chars):
        _HEX_VALUES[ord(_c)] = _offset + _i
_INVALID_NIBBLE = 255
_ZONE_SUFFIX = r"([+-]\d\d(:?\d\d){0,2}|Z)$"
_TIMESTAMP_TEXT = r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?" + _ZONE_SUFFIX
_UUID_TEXT_LENGTH = 36
_UUID_DASHES = (8, 13, 18, 23)
_BYTEA_PREFIX = "\\x"
_NIL_UUID_TEXT = "00000000-0000-0000-0000-000000000000"


def string_buffers(values: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """Offsets (relative to the data buffer) and data bytes of a string/binary array."""
    values = values.cast(pa.large_binary())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + len(values) + 1
    ]
    data_buffer = values.buffers()[2]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, np.uint8)
    )
    return offsets, data


def _decode_hex_pairs(
    hex_bytes: npt.NDArray[np.uint8], column: CanonicalColumn
) -> npt.NDArray[np.uint8]:
    nibbles = _HEX_VALUES[hex_bytes]
    if (nibbles == _INVALID_NIBBLE).any():
        raise ReconcileError(
            f"column {column.name!r} ({column.cql_type}): the target text holds a non-hex "
            f"character; check the column type and bytea_output = 'hex'"
        )
    pairs = nibbles.reshape(-1, 2)
    return ((pairs[:, 0] << 4) | pairs[:, 1]).astype(np.uint8)


def _uuid_from_text(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    filled = pc.fill_null(values, _NIL_UUID_TEXT)
    lengths = pc.binary_length(filled).to_numpy(zero_copy_only=False)
    if len(filled) and (lengths != _UUID_TEXT_LENGTH).any():
        sample = filled.filter(pa.array(lengths != _UUID_TEXT_LENGTH))[0].as_py()
        raise ReconcileError(
            f"column {column.name!r} ({column.cql_type}): {sample!r} is not a UUID in "
            f"8-4-4-4-12 form; store it as PostgreSQL uuid"
        )
    offsets, data = string_buffers(filled)
    text = data[offsets[0] : offsets[-1]].reshape(-1, _UUID_TEXT_LENGTH)
    if len(text) and (text[:, list(_UUID_DASHES)] != ord("-")).any():
        raise ReconcileError(
            f"column {column.name!r} ({column.cql_type}): a value is not a UUID in 8-4-4-4-12 form"
        )
    keep = [i for i in range(_UUID_TEXT_LENGTH) if i not in _UUID_DASHES]
    raw = _decode_hex_pairs(np.ascontiguousarray(text[:, keep]).reshape(-1), column)
    return pa.FixedSizeBinaryArray.from_buffers(
        UUID_TYPE, len(values), [_validity(values), pa.py_buffer(raw.tobytes())]
    )


def _validity(values: pa.Array) -> pa.Buffer | None:
    """A fresh validity bitmap for ``values`` (None when nothing is NULL)."""
    if not values.null_count:
        return None
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    return pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())


def _bytea_from_text(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    filled = pc.fill_null(values, _BYTEA_PREFIX)
    prefixed = pc.starts_with(filled, pattern=_BYTEA_PREFIX)
    lengths = pc.binary_length(filled).to_numpy(zero_copy_only=False).astype(np.int64)
    if not pc.all(prefixed).as_py() or (lengths % 2).any():
        raise ReconcileError(
            f"column {column.name!r} (blob): the target text is not bytea hex output ('\\x…'); "
            f"run SET bytea_output = 'hex' before COPY"
        )
    offsets, data = string_buffers(filled)
    relative = offsets - offsets[0]
    payload = np.ones(int(relative[-1]), dtype=bool)
    starts = relative[:-1]
    payload[starts] = False
    payload[starts + 1] = False
    raw = _decode_hex_pairs(data[offsets[0] : offsets[-1]][payload], column)
    out_offsets = ((relative - 2 * np.arange(len(relative))) // 2).astype(np.int64)
    decoded = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(values),
        [_validity(values), pa.py_buffer(out_offsets.tobytes()), pa.py_buffer(raw.tobytes())],
    )
    return decoded.cast(pa.binary())


def _timestamp_from_text(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    # The fast path is one cast; only a failure pays for diagnosing the text.
    try:
        return values.cast(TIMESTAMP_TYPE)
    except pa.ArrowInvalid:
        pass
    zoned = pc.fill_null(pc.match_substring_regex(values, pattern=_ZONE_SUFFIX), False)
    if not pc.any(zoned).as_py():
        try:
            return values.cast(pa.timestamp("us")).cast(TIMESTAMP_TYPE)
        except pa.ArrowInvalid:
            pass
    parsed = pc.fill_null(pc.match_substring_regex(values, pattern=_TIMESTAMP_TEXT), True)
    sample = values.filter(pc.invert(parsed))
    reason = (
        f"{sample[0].as_py()!r} is not an ISO timestamp (infinity and BC dates cannot come "
        f"from Cassandra)"
        if len(sample)
        else "values with and without a UTC offset are mixed; store it as timestamptz"
    )
    raise ReconcileError(
        f"column {column.name!r} (timestamp): {reason}; read with DateStyle=ISO and TimeZone=UTC"
    )


def _time_from_text(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    if pc.all(pc.match_substring_regex(values, r"^[0-9]+$")).as_py() is not False:
        # A bigint column of nanoseconds since midnight (how the sink stores CQL time).
        return values.cast(pa.int64()).cast(TIME_TYPE)
    try:
        moments = pc.binary_join_element_wise("1970-01-01T", values, "").cast(pa.timestamp("ns"))
    except pa.ArrowInvalid as exc:
        raise ReconcileError(f"column {column.name!r} (time): not HH:MM:SS[.f]: {exc}") from None
    return moments.cast(pa.int64()).cast(TIME_TYPE)


def _bool_from_text(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    lowered = pc.utf8_lower(values)
    truthy = pc.is_in(lowered, value_set=pa.array(["t", "true"]))
    falsy = pc.is_in(lowered, value_set=pa.array(["f", "false"]))
    if not pc.all(pc.or_(pc.or_(truthy, falsy), values.is_null())).as_py():
        raise ReconcileError(
            f"column {column.name!r} (boolean): expected t/f from PostgreSQL boolean"
        )
    return pc.if_else(values.is_null(), pa.scalar(None, pa.bool_()), truthy)


def _unique_map(
    values: pa.Array,
    column: CanonicalColumn,
    convert: Callable[[object], object],
    arrow_type: pa.DataType,
) -> pa.Array:
    """Apply a per-value Python conversion once per distinct value (targets repeat values a lot)."""
    encoded = pc.dictionary_encode(values)
    converted = pa.array(_convert_each(encoded.dictionary.to_pylist(), column, convert), arrow_type)
    return converted.take(encoded.indices)


def _text_column(values: pa.Array, column: CanonicalColumn, schema: CanonicalSchema) -> pa.Array:
    name = column.cql_type.name
    if len(values) == 0:
        return pa.array([], column.arrow_type)
    if name in ("text", "ascii"):
        return values
    if name in _JSON_TYPES:
        return _unique_map(
            values, column, lambda v: canonical_json(v, column.cql_type, schema), pa.string()
        )
    if name in _INTEGER_NAMES or name in _FLOAT_NAMES or name == "date":
        try:
            return values.cast(column.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ReconcileError(
                f"column {column.name!r} ({column.cql_type}): target text does not parse as "
                f"{column.arrow_type}: {exc}"
            ) from None
    if name == "varint":
        normalized = normalize_varint_text(values)
        _check_pattern(normalized, _VARINT_PATTERN, column, "an integer")
        return normalized
    if name == "decimal":
        _check_pattern(values, r"^[+-]?\d+(\.\d*)?$", column, "a plain decimal number")
        return normalize_decimal_text(values, keep_scale=column.is_key)
    if name == "boolean":
        return _bool_from_text(values, column)
    if name == "blob":
        return _bytea_from_text(values, column)
    if name in ("uuid", "timeuuid"):
        return _uuid_from_text(values, column)
    if name == "timestamp":
        return _truncate(_timestamp_from_text(values, column), column, schema)
    if name == "time":
        return _truncate(_time_from_text(values, column), column, schema)
    if name == "duration":
        precision = None if column.is_key else schema.timestamp_precision
        return _unique_map(
            values,
            column,
            lambda v: duration_text(*duration_parts(v), precision=precision),
            pa.string(),
        )
    if name == "inet":
        return _unique_map(values, column, inet_text, pa.string())
    raise ReconcileError(f"column {column.name!r}: CQL type {column.cql_type} is not supported")


def from_postgres_text(
    table: pa.Table, schema: CanonicalSchema, *, numeric_text: Collection[str] = ()
) -> pa.Table:
    """A canonical table from PostgreSQL text columns (all ``string``, NULL ≠ '').

    ``numeric_text`` names decimal/varint columns read from ``numeric`` through
    ``trim_scale`` (a decimal key without it): PostgreSQL prints those in canonical plain
    notation, so they are only checked for ``NaN``/``Infinity`` (and a varint for a
    fraction) instead of normalized.
    """
    return _from_postgres(table, schema, numeric_text, typed=False)


def from_postgres_columns(
    table: pa.Table, schema: CanonicalSchema, *, numeric_text: Collection[str] = ()
) -> pa.Table:
    """A canonical table from a typed read (``postgres.arrow_read``): each column either as
    PostgreSQL's text (see :func:`from_postgres_text`) or in the Arrow type ADBC gives its
    PostgreSQL type, cast exactly (an integer that does not fit is an error) and, for a
    compared timestamp or time, floored to the declared precision."""
    return _from_postgres(table, schema, numeric_text, typed=True)


def _from_postgres(
    table: pa.Table, schema: CanonicalSchema, numeric_text: Collection[str], *, typed: bool
) -> pa.Table:
    missing = [n for n in schema.column_names if n not in table.column_names]
    if missing:
        raise ReconcileError(
            f"table {schema.table}: the target read lacks columns {missing}; "
            f"COPY every column of CanonicalSchema.column_names"
        )
    arrays = []
    for column in schema.columns:
        values = table.column(column.name)
        if values.type not in (pa.string(), pa.large_string()):
            if not typed:
                raise ReconcileError(
                    f"table {schema.table}: target column {column.name!r} is {values.type}, "
                    f"expected text; read the CSV with every column as string"
                )
            chunks = [_native_column(chunk, column, schema) for chunk in values.chunks]
        else:
            values = values.cast(pa.string())
            if column.role == ColumnRole.VERSION:
                chunks = [_version_from_text(chunk, schema) for chunk in values.chunks]
            elif column.name in numeric_text and column.cql_type.name in ("decimal", "varint"):
                chunks = [_numeric_text_column(chunk, column) for chunk in values.chunks]
            else:
                chunks = [_text_column(chunk, column, schema) for chunk in values.chunks]
        arrays.append(pa.chunked_array(chunks, column.arrow_type))
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema)


# The earliest timestamp and date PostgreSQL stores (4713-11-24 BC), since the Unix epoch.
# ADBC's binary reader shifts PostgreSQL's 2000-based values without an overflow check, so
# ±infinity and the years past 294,247 come out below these.
_POSTGRES_MIN_MICROS = -210_866_803_200_000_000
_POSTGRES_MIN_DAYS = -2_440_588


def _native_column(values: pa.Array, column: CanonicalColumn, schema: CanonicalSchema) -> pa.Array:
    """A column ADBC read in its own type (uuid arrives as an extension over 16 bytes)."""
    if isinstance(values.type, pa.BaseExtensionType):
        values = values.storage
    if pa.types.is_timestamp(values.type) or pa.types.is_date32(values.type):
        storage = values.cast(pa.int64() if pa.types.is_timestamp(values.type) else pa.int32())
        smallest = pc.min(storage).as_py()
        floor = _POSTGRES_MIN_MICROS if pa.types.is_timestamp(values.type) else _POSTGRES_MIN_DAYS
        if smallest is not None and smallest < floor:
            raise ReconcileError(
                f"column {column.name!r} ({column.cql_type}): the target holds infinity or a "
                "date beyond what Cassandra can store; repair or delete that target row"
            )
    if pa.types.is_time(values.type):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[values.type.unit]
        largest = pc.max(values.cast(pa.int64())).as_py()
        if largest is not None and largest >= SECONDS_PER_DAY * per_second:
            raise ReconcileError(
                f"column {column.name!r} ({column.cql_type}): the target holds 24:00:00, "
                "which a CQL time cannot; repair or delete that target row"
            )
    return _conform(values, column, schema)


_NUMERIC_SPECIALS = pa.array(["NaN", "Infinity", "-Infinity"])


def _numeric_text_column(values: pa.Array, column: CanonicalColumn) -> pa.Array:
    """PostgreSQL's own numeric output: already canonical, unless not a finite number."""
    special = pc.is_in(values, value_set=_NUMERIC_SPECIALS)
    if pc.any(special).as_py():
        sample = values.filter(special)[0].as_py()
        raise ReconcileError(
            f"column {column.name!r} ({column.cql_type}): {sample!r} is not a finite number "
            "(Cassandra has no NaN or infinite decimal); repair or delete that target row"
        )
    if column.cql_type.name == "varint":
        fraction = pc.fill_null(pc.match_substring(values, "."), False)
        if pc.any(fraction).as_py():
            sample = values.filter(fraction)[0].as_py()
            raise ReconcileError(
                f"column {column.name!r} (varint): {sample!r} is not an integer; "
                "check the target column type against the declaration"
            )
    return values


def _version_from_text(values: pa.Array, schema: CanonicalSchema) -> pa.Array:
    try:
        return values.cast(VERSION_TYPE)
    except pa.ArrowInvalid as exc:
        raise ReconcileError(
            f"table {schema.table}: version column {schema.version_column!r} is not a bigint "
            f"of µs: {exc}"
        ) from None


def postgres_csv_options(names: Sequence[str]) -> dict[str, Any]:
    """pyarrow CSV options for PostgreSQL's ``COPY … (FORMAT CSV)`` output: every column as
    text, unquoted empty = NULL, quoted ``""`` = empty string, newlines inside values."""
    read = pa_csv.ReadOptions(column_names=list(names))
    return {
        "read_options": read,
        "parse_options": pa_csv.ParseOptions(newlines_in_values=True),
        "convert_options": pa_csv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        ),
    }


def read_postgres_csv(source: bytes | IO[bytes], schema: CanonicalSchema) -> pa.Table:
    """A canonical table from the bytes of ``COPY (SELECT column_names …) TO STDOUT (FORMAT CSV)``."""
    names = list(schema.column_names)
    if isinstance(source, bytes) and not source:
        return from_postgres_text(pa.table({n: pa.array([], pa.string()) for n in names}), schema)
    stream = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        table = pa_csv.read_csv(stream, **postgres_csv_options(names))
    except pa.ArrowInvalid as exc:
        raise ReconcileError(
            f"table {schema.table}: the COPY output is not CSV with {len(names)} columns: {exc}"
        ) from None
    return from_postgres_text(table, schema)
