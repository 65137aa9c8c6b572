"""Column layout of the rows repair writes and verification compares.

An upsert row holds the table's replicated columns in declaration order, masked ones
left out, then the version (source write time in µs). The source's key re-read returns
rows in this layout and repair takes them as they come.
"""

from __future__ import annotations

from cdc_pipelines.config import ColumnSpec, TableSpec


def upsert_layout(table: TableSpec, version_column: str) -> tuple[str, ...]:
    """Column order of an upsert row: replicated non-masked columns (declared order), version."""
    return (*(c.name for c in written_columns(table)), version_column)


def written_columns(table: TableSpec) -> tuple[ColumnSpec, ...]:
    """The columns repair writes: replicated ones in declaration order, masked ones left out."""
    return tuple(c for c in table.replicated_columns if c.name not in table.mask)
