"""PostgreSQL values for repair: check a Python value against a target column type and render it.

:func:`pg_value` turns a value into the exact Python object that binary COPY sends (with
:func:`register_copy_dumpers` for intervals and JSON), and :func:`sql_literal` writes that same
object as an escaped, typed SQL literal for the dry-run script. Both apply one set of checks,
so the script and the COPY path write identical data.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import operator
import re
import struct
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

from psycopg import sql
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format

from cdc_pipelines.config import PG_TYPE_SYNTAX
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.types import canonical_pg_type

INTEGER_BITS = {"smallint": 16, "integer": 32, "bigint": 64}
INT32_BITS = 32
INT64_BITS = 64
# numeric's limits (PostgreSQL docs, "Arbitrary Precision Numbers").
NUMERIC_MAX_INTEGER_DIGITS = 131_072
NUMERIC_MAX_FRACTION_DIGITS = 16_383
NANOS_PER_MICRO = 1_000
MICROS_PER_SECOND = 1_000_000
SECONDS_PER_DAY = 86_400
UNIX_EPOCH_DATE = dt.date(1970, 1, 1)
JSON_SEPARATORS = (",", ":")
VALUE_PREVIEW_CHARS = 80
FLOAT_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}
# A JSON escape of U+0000 that is not itself an escaped backslash followed by "u0000".
_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
INTERVAL_OID = 1186
JSON_OID = 114
JSONB_OID = 3802
JSONB_BINARY_VERSION = b"\x01"
_TYPMOD = re.compile(r" ?\( *\d+ *(?:, *\d+ *)?\)")
_ARRAY_SUFFIX = "[]"


class Family(StrEnum):
    """How repair treats a PostgreSQL base type."""

    TEXT = "text"
    INTEGER = "integer"
    NUMERIC = "numeric"
    REAL = "real"
    DOUBLE = "double precision"
    BOOLEAN = "boolean"
    BYTEA = "bytea"
    UUID = "uuid"
    TIMESTAMPTZ = "timestamp with time zone"
    TIMESTAMP = "timestamp without time zone"
    DATE = "date"
    TIME = "time without time zone"
    INTERVAL = "interval"
    INET = "inet"
    CIDR = "cidr"
    JSON = "json"


_FAMILY_OF_BASE: Mapping[str, Family] = {
    "text": Family.TEXT,
    "character varying": Family.TEXT,
    "character": Family.TEXT,
    "smallint": Family.INTEGER,
    "integer": Family.INTEGER,
    "bigint": Family.INTEGER,
    "numeric": Family.NUMERIC,
    "real": Family.REAL,
    "double precision": Family.DOUBLE,
    "boolean": Family.BOOLEAN,
    "bytea": Family.BYTEA,
    "uuid": Family.UUID,
    "timestamp with time zone": Family.TIMESTAMPTZ,
    "timestamp without time zone": Family.TIMESTAMP,
    "date": Family.DATE,
    "time without time zone": Family.TIME,
    "interval": Family.INTERVAL,
    "inet": Family.INET,
    "cidr": Family.CIDR,
    "json": Family.JSON,
    "jsonb": Family.JSON,
}


@dataclass(frozen=True)
class PgInterval:
    """An interval exactly as PostgreSQL stores it: months, days and microseconds apart."""

    months: int
    days: int
    microseconds: int


@dataclass(frozen=True)
class JsonText:
    """Serialized JSON for a json/jsonb column (written as is, never re-encoded)."""

    text: str


@dataclass(frozen=True)
class ColumnType:
    """A target column type as repair understands it.

    ``declared`` is the canonical spelling (typmod kept); ``base`` drops typmod and array
    brackets. Literals cast to ``cast`` (no typmod), so the INSERT's assignment applies the
    column's typmod exactly as COPY does (an explicit ``::varchar(3)`` would truncate silently).
    """

    declared: str
    base: str
    family: Family
    is_array: bool

    @property
    def element(self) -> ColumnType:
        return ColumnType(self.declared.removesuffix(_ARRAY_SUFFIX), self.base, self.family, False)

    @property
    def cast(self) -> str:
        # char without a length means char(1): cast through text and let assignment check it.
        scalar = "text" if self.family is Family.TEXT else self.base
        return scalar + _ARRAY_SUFFIX if self.is_array else scalar


class _Rejected(ValueError):
    """Internal: the reason a value does not fit; wrapped into a ReconcileError with the value."""


@lru_cache(maxsize=512)
def column_type(pg_type: str) -> ColumnType:
    """Parse a PostgreSQL type (``numeric(38,10)``, ``text[]``, ``timestamptz``) for repair."""
    text = pg_type.strip()
    if not PG_TYPE_SYNTAX.match(text):
        raise ReconcileError(
            f"{pg_type!r} is not a plain PostgreSQL type name; fix the column's target_type"
        )
    declared = canonical_pg_type(text)
    scalar = declared
    dimensions = 0
    while scalar.endswith(_ARRAY_SUFFIX):
        scalar = scalar.removesuffix(_ARRAY_SUFFIX)
        dimensions += 1
    if dimensions > 1:
        raise ReconcileError(
            f"PostgreSQL type {declared!r} has {dimensions} array dimensions; repair writes "
            "one-dimensional arrays only (map nested collections to jsonb)"
        )
    base = " ".join(_TYPMOD.sub("", scalar).split())
    family = _FAMILY_OF_BASE.get(base)
    if family is None:
        raise ReconcileError(
            f"PostgreSQL type {declared!r} is not supported by repair; use one of "
            f"{sorted(_FAMILY_OF_BASE)} (or an array of one) as the column's target_type"
        )
    return ColumnType(declared, base, family, dimensions == 1)


# --------------------------------------------------------------------------- checking values


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Rejected(f"expected str, got {type(value).__name__}")
    if "\x00" in value:
        raise _Rejected(
            "PostgreSQL text cannot hold the NUL character (\\x00); clean the source value "
            "or exclude the column"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _Rejected("it holds an unpaired surrogate, which is not valid UTF-8") from None
    return value


def _integer(bits: int) -> Callable[[object], object]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def check(value: object) -> int:
        if isinstance(value, bool):
            raise _Rejected("a boolean is not an integer")
        try:
            number = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            raise _Rejected(f"expected an integer, got {type(value).__name__}") from None
        if not low <= number <= high:
            raise _Rejected(f"out of range [{low}, {high}]")
        return number

    return check


def _numeric(value: object) -> Decimal:
    if isinstance(value, bool):
        raise _Rejected("a boolean is not a number")
    if isinstance(value, int):
        value = Decimal(value)
    elif isinstance(value, float):
        value = Decimal(repr(value)) if math.isfinite(value) else Decimal(str(value))
    if not isinstance(value, Decimal):
        raise _Rejected(f"expected Decimal or int, got {type(value).__name__}")
    if value.is_snan():
        raise _Rejected("a signalling NaN has no PostgreSQL form")
    # str() is cheap; as_tuple() (exact digit counts) only for long or exponent forms.
    if value.is_finite() and (len(text := str(value)) > NUMERIC_MAX_FRACTION_DIGITS or "E" in text):
        _sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        if len(digits) + exponent > NUMERIC_MAX_INTEGER_DIGITS:
            raise _Rejected(f"more than {NUMERIC_MAX_INTEGER_DIGITS} digits before the point")
        if -exponent > NUMERIC_MAX_FRACTION_DIGITS:
            raise _Rejected(f"more than {NUMERIC_MAX_FRACTION_DIGITS} digits after the point")
    return value


def _float(value: object) -> float:
    if isinstance(value, bool):
        raise _Rejected("a boolean is not a number")
    if not isinstance(value, int | float | Decimal):
        raise _Rejected(f"expected float, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise _Rejected("out of range for double precision") from None


def _real(value: object) -> float:
    number = _float(value)
    # Round to float32 here, once: the literal then carries the exact float32 value, so the
    # script and binary COPY agree bit for bit (no double rounding in strtof).
    single: float = struct.unpack("f", struct.pack("f", number))[0]
    if math.isfinite(number) and (math.isinf(single) or (single == 0.0 and number != 0.0)):
        raise _Rejected("out of range for real (float4)")
    return single


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Rejected(f"expected bool, got {type(value).__name__}")
    return value


def _bytea(value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise _Rejected(f"expected bytes, got {type(value).__name__}")


def _uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        if isinstance(value, str):
            return uuid.UUID(value)
        if isinstance(value, bytes):
            return uuid.UUID(bytes=value)
    except ValueError as exc:
        raise _Rejected(str(exc)) from None
    raise _Rejected(f"expected uuid.UUID, got {type(value).__name__}")


def _aware_utc(value: object) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise _Rejected(f"expected an aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise _Rejected(
            "a naive datetime has no time zone; pass an aware one (cassandra-driver "
            "timestamps are UTC: value.replace(tzinfo=datetime.UTC))"
        )
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise _Rejected("in UTC it falls outside the years 1-9999") from None


def _timestamp(value: object) -> dt.datetime:
    # timestamp without time zone holds the UTC wall-clock time.
    return _aware_utc(value).replace(tzinfo=None)


def _date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        raise _Rejected("a datetime for a date column; pass value.date() explicitly")
    if isinstance(value, dt.date):
        return value
    days = getattr(value, "days_from_epoch", None)
    if isinstance(days, int):
        try:
            return UNIX_EPOCH_DATE + dt.timedelta(days=days)
        except OverflowError:
            raise _Rejected("outside the years 1-9999 that repair can write") from None
    raise _Rejected(f"expected datetime.date, got {type(value).__name__}")


def _time(value: object) -> dt.time:
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise _Rejected("an aware time for a time without time zone column")
        return value
    nanos = getattr(value, "nanosecond_time", None)
    if isinstance(nanos, int):
        if nanos % NANOS_PER_MICRO:
            raise _Rejected("it has nanoseconds; PostgreSQL time holds microseconds")
        seconds, micros = divmod(nanos // NANOS_PER_MICRO, MICROS_PER_SECOND)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        return dt.time(hour, minute, second, micros)
    raise _Rejected(f"expected datetime.time, got {type(value).__name__}")


def _fits(number: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= number < (1 << (bits - 1))


def _interval(value: object) -> PgInterval:
    if isinstance(value, PgInterval):
        interval = value
    elif isinstance(value, dt.timedelta):
        micros = value.seconds * MICROS_PER_SECOND + value.microseconds
        interval = PgInterval(0, value.days, micros)
    elif all(isinstance(getattr(value, a, None), int) for a in ("months", "days", "nanoseconds")):
        nanos: int = value.nanoseconds  # type: ignore[attr-defined]
        if nanos % NANOS_PER_MICRO:
            raise _Rejected("it has nanoseconds; PostgreSQL interval holds microseconds")
        micros = abs(nanos) // NANOS_PER_MICRO * (-1 if nanos < 0 else 1)
        interval = PgInterval(value.months, value.days, micros)  # type: ignore[attr-defined]
    else:
        raise _Rejected(f"expected Duration, timedelta or PgInterval, got {type(value).__name__}")
    if not (
        _fits(interval.months, INT32_BITS)
        and _fits(interval.days, INT32_BITS)
        and _fits(interval.microseconds, INT64_BITS)
    ):
        raise _Rejected("months/days must fit 32 bits and microseconds 64 bits")
    return interval


_IpValue = (
    ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | ipaddress.IPv4Interface
    | ipaddress.IPv6Interface
)


def _inet(value: object) -> _IpValue:
    try:
        if isinstance(value, str):
            value = ipaddress.ip_interface(value) if "/" in value else ipaddress.ip_address(value)
        elif isinstance(value, bytes):
            value = ipaddress.ip_address(value)
        elif isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            value = ipaddress.ip_interface(value.with_prefixlen)
    except ValueError as exc:
        raise _Rejected(str(exc)) from None
    if not isinstance(value, _IpValue):
        raise _Rejected(f"expected an ipaddress address, got {type(value).__name__}")
    if getattr(value, "scope_id", None):
        raise _Rejected("PostgreSQL inet has no IPv6 scope id (%zone)")
    return value


def _cidr(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str | ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        raise _Rejected(f"expected an ipaddress network, got {type(value).__name__}")
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise _Rejected(str(exc)) from None


def dumps_json(value: object) -> str:
    """JSON text with sorted keys and no NaN (jsonb has none); raises if not serializable."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=JSON_SEPARATORS, ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        raise _Rejected("JSON has no NaN or Infinity; store them as strings") from None
    except TypeError as exc:
        raise _Rejected(f"not JSON-serializable: {exc}") from None


def _json(value: object) -> JsonText:
    text = value.text if isinstance(value, JsonText) else dumps_json(value)
    if "\\u0000" in text and _JSON_NUL_ESCAPE.search(text):
        raise _Rejected("PostgreSQL jsonb cannot hold the NUL character (\\u0000)")
    return JsonText(_text(text))


_CHECKS: Mapping[Family, Callable[[object], object]] = {
    Family.TEXT: _text,
    Family.NUMERIC: _numeric,
    Family.REAL: _real,
    Family.DOUBLE: _float,
    Family.BOOLEAN: _boolean,
    Family.BYTEA: _bytea,
    Family.UUID: _uuid,
    Family.TIMESTAMPTZ: _aware_utc,
    Family.TIMESTAMP: _timestamp,
    Family.DATE: _date,
    Family.TIME: _time,
    Family.INTERVAL: _interval,
    Family.INET: _inet,
    Family.CIDR: _cidr,
    Family.JSON: _json,
}


def _array_items(value: object) -> Iterable[object]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise _Rejected(f"expected a list for an array column, got {type(value).__name__}")
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)  # a plain set has no order; sort for a deterministic array
        except TypeError:
            return list(value)
    return value


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= VALUE_PREVIEW_CHARS else text[: VALUE_PREVIEW_CHARS - 1] + "…"


def value_checker(pg_type: str | ColumnType) -> Callable[[object], object]:
    """A function giving :func:`pg_value` for one column type (built once, applied per row)."""
    ctype = pg_type if isinstance(pg_type, ColumnType) else column_type(pg_type)
    scalar = (
        _integer(INTEGER_BITS[ctype.base])
        if ctype.family is Family.INTEGER
        else _CHECKS[ctype.family]
    )

    def check_scalar(value: object) -> object:
        if value is None:
            return None
        try:
            return scalar(value)
        except _Rejected as exc:
            raise ReconcileError(
                f"{_preview(value)} cannot be written to a PostgreSQL {ctype.declared} column: {exc}"
            ) from None

    if not ctype.is_array:
        return check_scalar

    def check_array(value: object) -> object:
        if value is None:
            return None
        try:
            items = _array_items(value)
        except _Rejected as exc:
            raise ReconcileError(
                f"{_preview(value)} cannot be written to a PostgreSQL {ctype.declared} column: {exc}"
            ) from None
        result = []
        for item in items:
            if isinstance(item, list | tuple) and ctype.family is not Family.JSON:
                raise ReconcileError(
                    f"{_preview(value)} is nested; a {ctype.declared} column holds one dimension "
                    "(map nested collections to jsonb)"
                )
            result.append(check_scalar(item))
        return result

    return check_array


def pg_value(value: object, pg_type: str | ColumnType) -> object:
    """The checked Python object binary COPY writes for ``value`` into a ``pg_type`` column.

    Raises :class:`ReconcileError` naming the value, the type and the reason (naive
    datetime, NUL in text, nanoseconds in an interval, out-of-range number, …).
    """
    return value_checker(pg_type)(value)


# --------------------------------------------------------------------------- rendering literals


def quote_text(text: str) -> str:
    """A quoted string constant (``E'…'`` when it holds a backslash), as psycopg escapes it."""
    return sql.Literal(text).as_string(None).strip()


def _decimal_text(value: Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    return format(value, "f")


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return FLOAT_TEXT.get(value, repr(value))


def _interval_text(value: PgInterval) -> str:
    # Every field carries its own sign: under IntervalStyle sql_standard a leading sign would
    # otherwise apply to the fields after it.
    return f"{value.months:+d} mons {value.days:+d} days {value.microseconds:+d} microseconds"


def _plain(value: object) -> str:
    return str(value)


def _iso(value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return value.isoformat()  # type: ignore[attr-defined]


_TEXT_OF: Mapping[Family, Callable[[object], str]] = {
    Family.INTEGER: _plain,
    Family.NUMERIC: _decimal_text,  # type: ignore[dict-item]
    Family.REAL: _float_text,  # type: ignore[dict-item]
    Family.DOUBLE: _float_text,  # type: ignore[dict-item]
    Family.UUID: _plain,
    Family.TIMESTAMPTZ: _iso,
    Family.TIMESTAMP: _iso,
    Family.DATE: _iso,
    Family.TIME: _iso,
    Family.INTERVAL: _interval_text,  # type: ignore[dict-item]
    Family.INET: _plain,
    Family.CIDR: _plain,
}


def _render_checked(value: object, ctype: ColumnType, *, typed_null: bool = False) -> str:
    if value is None:
        return f"NULL::{ctype.cast}" if typed_null else "NULL"
    if ctype.is_array:
        element = ctype.element
        items = ", ".join(
            _render_checked(item, element, typed_null=True)
            for item in value  # type: ignore[attr-defined]
        )
        return f"ARRAY[{items}]::{ctype.cast}"
    family = ctype.family
    if family is Family.BOOLEAN:
        return "true" if value else "false"
    if family is Family.TEXT:
        return f"{quote_text(value)}::{ctype.cast}"  # type: ignore[arg-type]
    if family is Family.JSON:
        return f"{quote_text(value.text)}::{ctype.cast}"  # type: ignore[attr-defined]
    if family is Family.BYTEA:
        return f"'\\x{value.hex()}'::{ctype.cast}"  # type: ignore[attr-defined]
    # The remaining texts are digits, signs, hex, ISO dates and addresses: never a quote.
    return f"'{_TEXT_OF[family](value)}'::{ctype.cast}"


def render_literal(checked: object, pg_type: str | ColumnType) -> str:
    """The SQL literal of a value already passed through :func:`pg_value` for this type."""
    ctype = pg_type if isinstance(pg_type, ColumnType) else column_type(pg_type)
    return _render_checked(checked, ctype)


def sql_literal(value: object, pg_type: str | ColumnType) -> str:
    """A safely escaped literal of ``value`` cast to ``pg_type``'s base type (``NULL`` for None).

    The text assumes ``standard_conforming_strings = on`` (PostgreSQL's default; the
    dry-run script sets it). Raises :class:`ReconcileError` when the value does not fit.
    """
    ctype = pg_type if isinstance(pg_type, ColumnType) else column_type(pg_type)
    return _render_checked(value_checker(ctype)(value), ctype)


# --------------------------------------------------------------------------- binary COPY


class _IntervalBinaryDumper(Dumper):
    format = Format.BINARY
    oid = INTERVAL_OID

    def dump(self, obj: Any) -> bytes:
        return struct.pack(">qii", obj.microseconds, obj.days, obj.months)


class _JsonbTextBinaryDumper(Dumper):
    format = Format.BINARY
    oid = JSONB_OID

    def dump(self, obj: Any) -> bytes:
        return JSONB_BINARY_VERSION + obj.text.encode()


class _JsonTextBinaryDumper(Dumper):
    format = Format.BINARY
    oid = JSON_OID

    def dump(self, obj: Any) -> bytes:
        return bytes(obj.text.encode())


def register_copy_dumpers(adapters: AdaptersMap) -> None:
    """Teach binary COPY :class:`PgInterval` (months kept) and :class:`JsonText` (sent verbatim).

    Register them on a cursor's own map (``cursor.adapters``): the connection, maybe a
    pool's, stays untouched. They replace psycopg's interval/json dumpers by OID there.
    """
    adapters.register_dumper(PgInterval, _IntervalBinaryDumper)
    adapters.register_dumper(JsonText, _JsonTextBinaryDumper)
    adapters.register_dumper(JsonText, _JsonbTextBinaryDumper)
