"""Value conversion for repair: a cassandra-driver value becomes a checked PostgreSQL value.

One converter per written column (see the row contract in :mod:`.plan`); a bad value fails
here, while planning, before anything is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

from cdc_pipelines.config import ColumnSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.literals import ColumnType, Family, JsonText, value_checker
from cdc_pipelines.rows.canonical import (
    CanonicalSchema,
    dumps_canonical,
    json_element,
    time_nanos,
)
from cdc_pipelines.rows.connector_form import connector_value

Converter = Callable[[object], object]  # driver value -> checked PostgreSQL value


def _as_text(element: object) -> str:
    return element if isinstance(element, str) else dumps_canonical(element)


def _driver_scalar(cql: CqlType, ctype: ColumnType, schema: CanonicalSchema) -> Converter | None:
    """How a driver value of ``cql`` becomes a value of ``ctype``'s family (None: as is)."""
    family = ctype.family
    if family is Family.JSON:
        return lambda v: JsonText(dumps_canonical(json_element(v, cql, schema)))
    if family is Family.TEXT and cql.name not in ("text", "ascii"):
        return lambda v: v if isinstance(v, str) else _as_text(json_element(v, cql, schema))
    if family is Family.INTEGER and cql.name == "time":
        return time_nanos
    return None


def _is_empty_collection(value: object, cql: CqlType) -> bool:
    """Cassandra stores an empty non-frozen collection as no value: NULL, on both sides."""
    if cql.frozen:
        return False
    if cql.name in ("list", "set", "map"):
        return len(value) == 0  # type: ignore[arg-type]
    if cql.name == "udt":
        items = value.values() if isinstance(value, Mapping) else tuple(value)  # type: ignore[arg-type]
        return all(item is None for item in items)
    return False


def column_converter(column: ColumnSpec, ctype: ColumnType, schema: CanonicalSchema) -> Converter:
    """Driver value → checked PostgreSQL value for one column (errors carry no context yet)."""
    cql = column.cql_type
    check = value_checker(ctype)
    if ctype.family is Family.JSON and not ctype.is_array:
        user_types = {name: {f: str(t) for f, t in fields} for name, fields in schema.user_types}

        def to_json(value: object) -> object:
            # The connector's JSON shape, so repaired rows look like streamed ones.
            if value is None or _is_empty_collection(value, cql):
                return None
            try:
                text = json.dumps(
                    connector_value(cql, value, user_types), ensure_ascii=False, allow_nan=False
                )
            except ValueError:  # json names it "Out of range float values"
                raise ValueError(
                    f"a NaN or infinite number inside this {cql} has no jsonb form; correct "
                    "the source row (a float column outside a collection can hold it)"
                ) from None
            return check(JsonText(text))

        return to_json
    if ctype.is_array:
        if cql.name not in ("list", "set"):
            raise ReconcileError(
                f"column {column.name!r} is {cql} but its target type {ctype.declared} is an "
                "array; declare a list/set column or change target_type"
            )
        element = _driver_scalar(cql.params[0], ctype.element, schema)
        if element is None:
            return check

        def to_array(value: object) -> object:
            if value is None or isinstance(value, str | bytes):
                return check(value)
            items = [None if v is None else element(v) for v in value]  # type: ignore[attr-defined]
            return check(items)

        return to_array
    scalar = _driver_scalar(cql, ctype, schema)
    if scalar is None:
        return check
    return lambda value: None if value is None else check(scalar(value))


def hashable(value: object) -> object:
    """``value`` as a dict key that matches keys the way PostgreSQL compares them."""
    if isinstance(value, list | tuple):
        return tuple(hashable(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return ("NaN",)  # PostgreSQL treats NaN as equal to NaN; Python does not
    return value
