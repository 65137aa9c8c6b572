"""What a masked column holds in the target: the source value with the stream's mask applied.

The sink's transforms mask before PostgreSQL sees a value (see ``connect.configs``):
``hash`` replaces a string-carried value with the hex SHA-256 of the salt followed by the
value's connector text (the project's ``HashFields``), ``redact`` empties it, and Kafka's
``MaskField`` replaces any other supported value with its type's zero. Applying the same
mask to a source value lets reconciliation compare masked columns and lets repair write
them exactly as the stream would, never NULL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence

from cdc_pipelines.config import MaskMode, TableSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.rows.connector_form import STRING_CARRIED, connector_value

# MaskField's replacement per CQL type the connector sends as a number, boolean or time.
ZERO_VALUES: Mapping[str, object] = {
    "int": 0,
    "bigint": 0,
    "smallint": 0,
    "tinyint": 0,
    "counter": 0,
    "float": 0.0,
    "double": 0.0,
    "boolean": False,
    "timestamp": dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    "date": dt.date(1970, 1, 1),
    "time": 0,
}
TEXT = CqlType("text")


def masked_type(cql: CqlType) -> CqlType:
    """The type a masked column holds in the target: text for string-carried types."""
    return TEXT if cql.name in STRING_CARRIED else cql


def mask_value(cql: CqlType, mode: MaskMode, value: object, salt: bytes) -> object:
    """``value`` (as cassandra-driver returns it) as the masked target holds it."""
    if value is None:
        return None
    if cql.name in STRING_CARRIED:
        if mode is MaskMode.REDACT:
            return ""
        text = str(connector_value(cql, value, {}))
        return hashlib.sha256(salt + text.encode()).hexdigest()
    if cql.name in ZERO_VALUES:
        return ZERO_VALUES[cql.name]
    raise ConfigError(
        f"a {cql} column cannot be masked the way the stream masks it; exclude it instead"
    )


def mask_row(
    spec: TableSpec, names: Sequence[str], row: Sequence[object], salt: bytes | None
) -> list[object]:
    """A row whose values follow ``names``, with every masked column's value masked."""
    values = list(row)
    for position, name in enumerate(names):
        mode = spec.mask.get(name)
        if mode is None:
            continue
        if not salt and mode is MaskMode.HASH:
            state = "was not loaded" if salt is None else "is empty"
            raise ConfigError(
                f"table {spec.source}: column {name!r} is hashed, but the salt {state}; "
                "load it with connect.secrets.with_mask_salt"
            )
        values[position] = mask_value(
            spec.column(name).cql_type, mode, values[position], salt or b""
        )
    return values
