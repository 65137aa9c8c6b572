"""Catalog introspection of the live target table before a repair writes to it.

Checks the table against the plan (columns, types, a usable unique key), reads the type OIDs
that binary COPY needs, and finds what would make a straight COPY differ from an INSERT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.literals import Family, column_type
from cdc_pipelines.postgres.repair.plan import RepairPlan

TEXT_OID = 25


@dataclass(frozen=True)
class TargetTypes:
    """Type OIDs for COPY, read from the live table and checked against the plan, and why
    verified-absent rows may not be COPYed straight in (empty: they may)."""

    row_oids: tuple[int, ...]
    key_oids: tuple[int, ...]
    copy_blockers: tuple[str, ...] = ()
    row_types: tuple[str, ...] = ()  # as format_type writes them: with their modifiers


_CATALOG_COLUMNS = """
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       c.oid
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped
"""
_CATALOG_UNIQUE_KEYS = """
SELECT array_agg(a.attname::text ORDER BY k.ord)
FROM pg_catalog.pg_index AS i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indimmediate
  AND i.indisvalid AND i.indisready
GROUP BY i.indexrelid
"""
# What makes COPY differ from INSERT on the table or any of its partitions: COPY refuses
# row-level security and ignores rules; a user trigger may skip or rewrite rows, which
# only the guarded path's RETURNING would see.
_CATALOG_COPY_BLOCKERS = """
WITH tree AS (  -- pg_partition_tree is empty for a table that is not partitioned
    SELECT %(oid)s::oid AS relid
    UNION SELECT relid FROM pg_catalog.pg_partition_tree(%(oid)s::oid)
)
SELECT bool_or(c.relrowsecurity),
       bool_or(c.relhasrules),
       EXISTS (SELECT FROM pg_catalog.pg_trigger AS g JOIN tree AS t ON g.tgrelid = t.relid
               WHERE NOT g.tgisinternal AND g.tgenabled <> 'D')
FROM tree JOIN pg_catalog.pg_class AS c ON c.oid = tree.relid
"""
_COPY_BLOCKER_NAMES = ("row-level security", "rewrite rules", "user triggers")


def read_target_types(conn: psycopg.Connection[Any], plan: RepairPlan) -> TargetTypes:
    """The live table's COPY types; :class:`ReconcileError` if it cannot take the plan."""
    name = plan.target_name
    with conn.transaction():
        rows = conn.execute(
            _CATALOG_COLUMNS, (plan.table.target_schema, plan.table.target_table)
        ).fetchall()
        if not rows:
            raise ReconcileError(
                f"target table {name} does not exist; create it first (cdc-pipelines ddl apply)"
            )
        unique_keys = conn.execute(_CATALOG_UNIQUE_KEYS, (rows[0][3],)).fetchall()
        blocked = conn.execute(_CATALOG_COPY_BLOCKERS, {"oid": rows[0][3]}).fetchone() or ()
    live = {r[0]: (int(r[1]), str(r[2])) for r in rows}
    missing = [c.name for c in plan.columns if c.name not in live]
    if missing:
        raise ReconcileError(
            f"target table {name} lacks columns {missing}; apply the DDL plan "
            "(cdc-pipelines ddl apply) before repairing"
        )
    if not any(set(k[0]) == set(plan.table.primary_key) for k in unique_keys):
        raise ReconcileError(
            f"target table {name} has no valid primary key or unique index on "
            f"({', '.join(plan.table.primary_key)}); add it, repair upserts need it (an index "
            "left invalid by a failed CREATE INDEX CONCURRENTLY does not count: REINDEX it)"
        )
    oids: dict[str, int] = {}
    for column in plan.columns:
        oid, live_type = live[column.name]
        try:
            actual = column_type(live_type)
        except ReconcileError as exc:
            raise ReconcileError(f"target table {name}, column {column.name!r}: {exc}") from None
        declared = column.pg_type
        if (actual.family, actual.is_array) != (declared.family, declared.is_array) or (
            actual.family is Family.INTEGER and actual.base != declared.base
        ):
            raise ReconcileError(
                f"target table {name}, column {column.name!r} is {live_type} but the declaration "
                f"maps it to {declared.declared}; apply the DDL or fix the column's target_type"
            )
        # Text, varchar and char share the binary format; psycopg dumps char only as text.
        oids[column.name] = (
            TEXT_OID if actual.family is Family.TEXT and not actual.is_array else oid
        )
    return TargetTypes(
        row_oids=tuple(oids[c.name] for c in plan.columns),
        key_oids=(*(oids[c.name] for c in plan.key_columns), oids[plan.version.name]),
        copy_blockers=tuple(n for n, on in zip(_COPY_BLOCKER_NAMES, blocked, strict=True) if on),
        row_types=tuple(live[c.name][1] for c in plan.columns),
    )
