"""Column layout of the rows repair writes and verification compares.

An upsert row holds the table's replicated columns in declaration order (a masked column
holding its masked value, as the stream writes it), then the version (source write time in
µs). The source's key re-read returns rows in this layout and repair takes them as they come.
"""

from __future__ import annotations

from cdc_pipelines.config import ColumnSpec, TableSpec
from cdc_pipelines.cqltypes import CqlType


def upsert_layout(table: TableSpec, version_column: str) -> tuple[str, ...]:
    """Column order of an upsert row: replicated columns (declared order), then the version."""
    return (*(c.name for c in written_columns(table)), version_column)


def written_columns(table: TableSpec) -> tuple[ColumnSpec, ...]:
    """The columns repair writes: the replicated ones, in declaration order."""
    return table.replicated_columns


def has_cell_timestamp(cql_type: CqlType) -> bool:
    """WRITETIME applies to single cells: scalars and frozen values, not multi-cell
    collections, and not counters (CQL refuses WRITETIME on a counter)."""
    return (cql_type.is_scalar or cql_type.frozen) and cql_type.name != "counter"


def version_columns(table: TableSpec) -> tuple[ColumnSpec, ...]:
    """The columns whose largest WRITETIME is a source row's version (see ADR 0009).

    Every non-key declared column with a cell timestamp, excluded and masked ones included:
    the sink stamps a row with its change event's time, and an update of an excluded or
    masked column is a change event too, so both sides move together.
    """
    keys = set(table.primary_key)
    return tuple(c for c in table.columns if c.name not in keys and has_cell_timestamp(c.cql_type))
