"""SQL fragments shared by the dry-run script and :func:`apply_repair`: identifiers, the
version-guarded upsert tail and the delete guard, so both write the same guarded SQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from psycopg import sql

from cdc_pipelines.postgres.literals import Family
from cdc_pipelines.postgres.repair.plan import RepairColumn, RepairPlan

TARGET_ALIAS = sql.Identifier("target")


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def col(alias: sql.Identifier | sql.SQL, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(alias, ident(name))


def comparable(alias: sql.Identifier | sql.SQL, column: RepairColumn) -> sql.Composable:
    # json has no equality operator; compare it as jsonb.
    if column.pg_type.family is Family.JSON and column.pg_type.base == "json":
        return sql.SQL("{}::jsonb").format(col(alias, column.name))
    return col(alias, column.name)


def target_table(plan: RepairPlan) -> sql.Identifier:
    return sql.Identifier(plan.table.target_schema, plan.table.target_table)


def column_list(columns: Iterable[RepairColumn]) -> sql.Composed:
    return sql.SQL(", ").join(ident(c.name) for c in columns)


def key_match(
    left: sql.Identifier | sql.SQL, right: sql.Identifier | sql.SQL, plan: RepairPlan
) -> sql.Composed:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(col(left, c.name), col(right, c.name)) for c in plan.key_columns
    )


def upsert_tail(plan: RepairPlan) -> sql.Composed:
    """``ON CONFLICT … DO UPDATE … WHERE <guard>``: the same text for apply and the script."""
    excluded = sql.SQL("EXCLUDED")
    version = plan.version.name
    updated = (*plan.data_columns, plan.version)
    sets = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(ident(c.name), col(excluded, c.name)) for c in updated
    )
    target_version = col(TARGET_ALIAS, version)
    new_version = col(excluded, version)
    guard = [
        sql.SQL("{} IS NULL").format(target_version),
        sql.SQL("{} < {}").format(target_version, new_version),
    ]
    if plan.data_columns:
        guard.append(
            sql.SQL("({} = {} AND ROW({}) IS DISTINCT FROM ROW({}))").format(
                target_version,
                new_version,
                sql.SQL(", ").join(comparable(TARGET_ALIAS, c) for c in plan.data_columns),
                sql.SQL(", ").join(comparable(excluded, c) for c in plan.data_columns),
            )
        )
    return sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET {sets}\nWHERE {guard}").format(
        keys=column_list(plan.key_columns), sets=sets, guard=sql.SQL(" OR ").join(guard)
    )


def delete_guard(plan: RepairPlan, scan_version: sql.Composable) -> sql.Composed:
    target_version = col(TARGET_ALIAS, plan.version.name)
    return sql.SQL("({tv} IS NULL OR {tv} <= {scan})").format(tv=target_version, scan=scan_version)
