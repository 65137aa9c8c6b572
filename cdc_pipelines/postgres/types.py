"""CQL → PostgreSQL column types, chosen so the Debezium JDBC sink can write them.

The DDL, the reconciliation's target reader and the repair writer all take a
column's PostgreSQL type from :func:`column_pg_type`, so the three agree.

How a value travels: the Scylla CDC source connector (advanced format) turns each
CQL value into a Kafka Connect value, the JsonConverter carries it through Kafka,
and the Debezium JDBC sink 3.6.0.Final binds it into the existing column. What
lands, per CQL type (checked against the 3.6.0.Final jar and PostgreSQL 15):

============  ===============================  ==========================================
CQL           PostgreSQL                       Connect value → what the sink binds
============  ===============================  ==========================================
int           integer                          INT32
bigint        bigint                           INT64 (``counter`` too)
smallint      smallint                         INT16
tinyint       smallint                         INT8; PostgreSQL has no 1-byte integer
varint        numeric                          STRING of digits; exact, any size
decimal       numeric                          STRING; exact, scale kept as written
float         real                             FLOAT32
double        double precision                 FLOAT64
boolean       boolean                          BOOLEAN
text/ascii/   text                             STRING
varchar
blob          bytea                            BYTES (base64 in the JSON)
uuid/timeuuid uuid                             STRING; the sink casts ``?`` to uuid
timestamp     timestamp with time zone         Connect Timestamp (epoch ms, UTC); ms
                                               precision like CQL. The sink binds a UTC
                                               LocalDateTime, so Connect's JVM must run
                                               with ``-Duser.timezone=UTC``.
date          date                             Connect Date (days since epoch)
time          bigint                           INT64 nanoseconds since midnight. **Not
                                               ``time``**: the connector sends a plain
                                               int64, which PostgreSQL will not assign to
                                               ``time``; bigint keeps CQL's ns exactly.
duration      text                             STRING in CQL's literal form
                                               (``1mo2d3h4m5s6ms7us8ns``). **Not
                                               ``interval``**: PostgreSQL rejects the
                                               ``mo``/``us``/``ns`` units, and interval
                                               has no nanoseconds.
inet          inet                             STRING
list/set of   <element>[]                      ARRAY; the sink builds a typed JDBC array.
int, bigint,                                   A set becomes an array in CQL's order.
smallint,
tinyint,
float,
double,
boolean,
text, time
list/set of   text[]                           ARRAY of STRING; the sink can only build a
uuid, inet,                                    ``text[]``, which PostgreSQL will not assign
decimal,                                       to ``uuid[]``/``inet[]``/``numeric[]``.
varint, …
map, tuple,   jsonb                            JSON text. Maps arrive as arrays of
UDT, nested,                                   key/value structs, tuples and UDTs as
list/set of                                    structs; the sink 3.6.0 has no handler for
timestamp,                                     STRUCT (nor for arrays of timestamps or
date, blob                                     bytes), so the project's Connect transform
                                               ``ComplexFieldsToJson`` (cdc-transforms
                                               plugin) rewrites these columns as JSON
                                               text first: ``[{"key":…,"value":…}]`` for
                                               a map, ``{"tuple_member_0":…}`` for a
                                               tuple, ``{field:…}`` for a UDT.
============  ===============================  ==========================================

Two sink settings make the string-carried types work: ``stringtype=unspecified``
on the JDBC URL (else PostgreSQL refuses a varchar for numeric/inet), and the
sink's own cast for uuid. Masked columns whose type travels as a string but is
not text in PostgreSQL (uuid, inet, numeric) become ``text``, because the mask
replaces the value with text. ``target_type`` overrides everything; the sink
then binds the value as above, so an override must accept that value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cdc_pipelines.config import ColumnSpec, TableSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.rows.connector_form import STRING_CARRIED

VERSION_COLUMN_PG_TYPE = "bigint"
JSON_PG_TYPE = "jsonb"
TEXT_PG_TYPE = "text"


@dataclass(frozen=True)
class PgType:
    """A PostgreSQL column type and whether the JDBC sink can write the connector's value into it.

    ``sql`` is the canonical spelling (as ``format_type()`` prints it), so a
    live table's type compares equal with plain string equality.
    """

    sql: str
    sink_writable: bool = True

    def __str__(self) -> str:
        return self.sql


_SCALARS: Mapping[str, PgType] = MappingProxyType(
    {
        "int": PgType("integer"),
        "bigint": PgType("bigint"),
        "counter": PgType("bigint"),
        "smallint": PgType("smallint"),
        "tinyint": PgType("smallint"),
        "varint": PgType("numeric"),
        "decimal": PgType("numeric"),
        "float": PgType("real"),
        "double": PgType("double precision"),
        "boolean": PgType("boolean"),
        "text": PgType("text"),
        "ascii": PgType("text"),
        "varchar": PgType("text"),
        "blob": PgType("bytea"),
        "uuid": PgType("uuid"),
        "timeuuid": PgType("uuid"),
        "timestamp": PgType("timestamp with time zone"),
        "date": PgType("date"),
        "time": PgType("bigint"),
        "duration": PgType("text"),
        "inet": PgType("inet"),
    }
)

# Elements whose Connect array the sink binds as a native PostgreSQL array of the same type.
_NATIVE_ARRAY_ELEMENTS = frozenset(
    {"int", "bigint", "counter", "smallint", "tinyint", "float", "double", "boolean", "time"}
)
# Elements the sink binds as text[] (Connect STRING arrays).
_TEXT_ARRAY_ELEMENTS = STRING_CARRIED


def pg_type(cql: CqlType) -> PgType:
    """The PostgreSQL type for a CQL type (see the module table for why each)."""
    if cql.is_scalar:
        return _SCALARS[cql.name]
    if cql.name in ("list", "set"):
        (element,) = cql.params
        if element.name in _NATIVE_ARRAY_ELEMENTS:
            return PgType(f"{_SCALARS[element.name].sql}[]")
        if element.name in _TEXT_ARRAY_ELEMENTS:
            return PgType(f"{TEXT_PG_TYPE}[]")
    # map, tuple, UDT, nested collections, arrays of timestamp/date/blob: the project's
    # ComplexFieldsToJson transform turns them into JSON text, which lands in jsonb.
    return PgType(JSON_PG_TYPE)


def column_pg_type(table: TableSpec, column: ColumnSpec) -> PgType:
    """The type of ``column`` in ``table``'s target: override, else masked-as-text, else mapped."""
    mapped = pg_type(column.cql_type)
    if column.target_type:
        return PgType(canonical_pg_type(column.target_type), mapped.sink_writable)
    if column.name in table.mask and column.cql_type.name in STRING_CARRIED:
        return PgType(TEXT_PG_TYPE, mapped.sink_writable)
    return mapped


# ---------------------------------------------------------------------------
# Canonical spelling, so a declared type compares with what the catalog reports.

_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "int": "integer",
        "int4": "integer",
        "int2": "smallint",
        "int8": "bigint",
        "float4": "real",
        "float8": "double precision",
        "float": "double precision",
        "bool": "boolean",
        "decimal": "numeric",
        "varchar": "character varying",
        "char": "character",
        "bpchar": "character",
        "timestamptz": "timestamp with time zone",
        "timestamp": "timestamp without time zone",
        "timetz": "time with time zone",
        "time": "time without time zone",
        "varbit": "bit varying",
    }
)
_PARAMETRIZED = re.compile(r"^(?P<name>[a-z_][a-z0-9_ ]*?) ?\((?P<args>[0-9, ]+)\)(?P<rest>.*)$")
_TZ_FAMILIES = ("timestamp", "time")
# float(p) is real up to 24 bits of precision, double precision above.
_REAL_MAX_PRECISION = 24


def canonical_pg_type(text: str) -> str:
    """Spell a PostgreSQL type the way ``format_type()`` does (``timestamptz`` → ``timestamp with time zone``)."""
    normalized = " ".join(text.strip().lower().split())
    dims = 0
    while normalized.endswith("[]"):
        normalized = normalized[:-2].rstrip()
        dims += 1
    return _canonical_scalar(normalized) + "[]" * dims


def _canonical_scalar(text: str) -> str:
    match = _PARAMETRIZED.match(text)
    if not match:
        return _ALIASES.get(text, text)
    name = match.group("name").strip()
    args = ",".join(a.strip() for a in match.group("args").split(","))
    rest = match.group("rest").strip()
    if name in ("timestamptz", "timetz"):
        return f"{name[:-2]}({args}) with time zone"
    if name in _TZ_FAMILIES:
        return f"{name}({args}) {rest or 'without time zone'}"
    if name == "float":
        return "real" if int(args) <= _REAL_MAX_PRECISION else "double precision"
    base = _ALIASES.get(name, name)
    return f"{base}({args}){' ' + rest if rest else ''}"
