"""The dry-run SQL script of a repair plan, with the same guarded effect as applying it.

psql-runnable, with the same guarded upserts and deletes as :func:`apply_repair`, in one
transaction; it does not write the audit tables.
"""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from cdc_pipelines.postgres.literals import render_literal
from cdc_pipelines.postgres.repair.plan import RepairPlan
from cdc_pipelines.postgres.repair.sql_parts import (
    TARGET_ALIAS,
    col,
    column_list,
    delete_guard,
    target_table,
    upsert_tail,
)

SCRIPT_ROWS_PER_STATEMENT = 100


def _comment(text: str) -> str:
    """Text safe inside a ``--`` comment: no line breaks or other control characters."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def render_script(plan: RepairPlan) -> str:
    """A psql-runnable script with the same guarded effect on the table as ``apply_repair``.

    Run it with ``psql -v ON_ERROR_STOP=1 -f plan.sql`` (it has its own BEGIN/COMMIT).
    It does not write the audit tables.
    """
    target = target_table(plan)
    header = [
        "-- cdc_pipelines repair plan (dry run). Review it, then run it with:",
        "--   psql -v ON_ERROR_STOP=1 -f <this file>",
        f"-- table:     {_comment(plan.table.source)} -> {_comment(target.as_string(None))}",
        f"-- run id:    {plan.run_id}",
        f"-- generated: {plan.created_at.astimezone(dt.UTC).isoformat(timespec='seconds')}",
        f"-- upserts:   {plan.write_count} ({plan.insert_count} absent from the target when "
        f"verified; a target row with a newer {_comment(plan.version.name)} is kept)",
        f"-- deletes:   {plan.delete_count} (a row whose version advanced since the scan is kept)",
        "-- The audit tables are written by apply_repair only, not by this script.",
        "SET client_encoding = 'UTF8';",
        "SET standard_conforming_strings = on;",
        "BEGIN;",
    ]
    parts = ["\n".join(header)]
    columns = plan.columns
    head = sql.SQL("INSERT INTO {} AS {} ({}) VALUES").format(
        target, TARGET_ALIAS, column_list(columns)
    )
    head_text = head.as_string(None)
    tail_text = upsert_tail(plan).as_string(None)
    # The script may run long after the plan: every row goes through the guarded upsert.
    written = (*plan.inserts, *plan.upserts)
    for start in range(0, len(written), SCRIPT_ROWS_PER_STATEMENT):
        chunk = written[start : start + SCRIPT_ROWS_PER_STATEMENT]
        values = ",\n".join(
            "  ("
            + ", ".join(render_literal(v, c.pg_type) for v, c in zip(row, columns, strict=True))
            + ")"
            for row in chunk
        )
        parts.append(f"{head_text}\n{values}\n{tail_text};")
    key_columns = plan.key_columns
    for row in plan.deletes:
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(
                col(TARGET_ALIAS, c.name), sql.SQL(render_literal(v, c.pg_type))
            )
            for c, v in zip(key_columns, row[:-1], strict=True)
        )
        scan = sql.SQL(render_literal(row[-1], plan.version.pg_type))
        statement = sql.SQL("DELETE FROM {} AS {} WHERE {} AND {};").format(
            target, TARGET_ALIAS, match, delete_guard(plan, scan)
        )
        parts.append(statement.as_string(None))
    parts.append("COMMIT;\n")
    return "\n".join(parts)
