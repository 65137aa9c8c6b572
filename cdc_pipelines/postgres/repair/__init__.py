"""Bulk repair of one target table: version-guarded upserts and deletes in audited batches.

:func:`plan_repair` checks and converts the verified discrepancies once (a bad value fails
here, before anything is written; the row contract is in :mod:`.plan`); the plan renders a
dry-run SQL script (:mod:`.script`), and :func:`apply_repair` writes it batch by batch, each
batch one transaction (:mod:`.apply`). A row whose version is newer than the repair's is
never touched.

Modules, each importing only those listed before it: :mod:`.convert` (driver values to
checked PostgreSQL values), :mod:`.plan`, :mod:`.sql_parts` (SQL shared by script and
apply), :mod:`.script` (:func:`render_script`, the dry run), :mod:`.catalog` (the live
target table), :mod:`.encode` (a plan's rows as COPY data, ahead of the apply), :mod:`.apply`.
"""

from cdc_pipelines.postgres.repair.apply import (
    DEFAULT_BATCH_SIZE,
    BatchHook,
    BatchReport,
    RepairOutcome,
    apply_repair,
    batch_count,
)
from cdc_pipelines.postgres.repair.encode import EncodedPlan, encode_plan
from cdc_pipelines.postgres.repair.plan import (
    BatchKind,
    ExtraRow,
    RepairColumn,
    RepairPlan,
    checked_keys,
    new_run_id,
    plan_repair,
)
from cdc_pipelines.postgres.repair.script import render_script

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BatchHook",
    "BatchKind",
    "BatchReport",
    "EncodedPlan",
    "ExtraRow",
    "RepairColumn",
    "RepairOutcome",
    "RepairPlan",
    "apply_repair",
    "batch_count",
    "checked_keys",
    "encode_plan",
    "new_run_id",
    "plan_repair",
    "render_script",
]
