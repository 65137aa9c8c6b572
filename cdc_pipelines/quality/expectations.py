"""The declaration's expectations, named for asset checks and translated to Great Expectations.

Great Expectations is imported only when a suite is built: it takes seconds to import,
and loading the Dagster definitions must stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cdc_pipelines.config import Expectation, TableSpec

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation as GxExpectation

Side = Literal["target", "source"]
CHECK_NAME_PREFIX = "expect"
_NOT_NAME = re.compile(r"[^a-z0-9_]+")
MAX_NAME_LENGTH = 60


@dataclass(frozen=True)
class DeclaredExpectation:
    """An expectation of one table with the name its asset check carries."""

    name: str
    expectation: Expectation

    @property
    def description(self) -> str:
        e = self.expectation
        subject = f"column {e.column!r}" if e.column else "the row count"
        if e.kind == "not_null":
            return f"{subject} is never NULL"
        if e.kind == "unique":
            return f"{subject} has no duplicate values"
        if e.kind == "in_set":
            return f"{subject} only takes the values {list(e.values or ())}"
        if e.kind == "matches_regex":
            return f"{subject} matches /{e.regex}/"
        bounds = " and ".join(
            part
            for part in (
                f">= {e.min:g}" if e.min is not None else "",
                f"<= {e.max:g}" if e.max is not None else "",
            )
            if part
        )
        return f"{subject} is {bounds}"


def _name(expectation: Expectation) -> str:
    parts = [CHECK_NAME_PREFIX, expectation.kind]
    if expectation.column:
        parts.append(_NOT_NAME.sub("_", expectation.column.lower()).strip("_") or "column")
    return "_".join(parts)[:MAX_NAME_LENGTH]


def declared_expectations(table: TableSpec, side: Side) -> tuple[DeclaredExpectation, ...]:
    """The table's expectations on ``side``, each with a unique, stable check name."""
    chosen = [e for e in table.expectations if e.side == side]
    names = [_name(e) for e in chosen]
    result = []
    for i, (expectation, name) in enumerate(zip(chosen, names, strict=True)):
        if names.count(name) > 1:
            name = f"{name}_{names[:i].count(name) + 1}"
        result.append(DeclaredExpectation(name, expectation))
    return tuple(result)


def gx_expectation(expectation: Expectation) -> GxExpectation:
    """The Great Expectations expectation that checks ``expectation``."""
    import great_expectations.expectations as gxe

    column = expectation.column or ""
    if expectation.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=column)
    if expectation.kind == "unique":
        return gxe.ExpectColumnValuesToBeUnique(column=column)
    if expectation.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(
            column=column, value_set=list(expectation.values or ())
        )
    if expectation.kind == "matches_regex":
        return gxe.ExpectColumnValuesToMatchRegex(column=column, regex=expectation.regex or "")
    if expectation.kind == "between":
        return gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=expectation.min, max_value=expectation.max
        )
    return gxe.ExpectTableRowCountToBeBetween(
        min_value=None if expectation.min is None else int(expectation.min),
        max_value=None if expectation.max is None else int(expectation.max),
    )


def columns_needed(declared: Sequence[DeclaredExpectation]) -> tuple[str, ...]:
    """The columns a suite reads, in first-use order."""
    seen: dict[str, None] = {}
    for item in declared:
        if item.expectation.column:
            seen.setdefault(item.expectation.column)
    return tuple(seen)
