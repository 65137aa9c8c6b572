"""The second step of a table's reconciliation: one run per token slice after the index run.

A run status sensor, so it reacts to the index run's success wherever it was requested
from (the lag or DLQ sensor, the nightly schedule, or a person in the UI).
"""

import inspect
from collections.abc import Sequence

import dagster as dg

from cdc_pipelines.defs.names import (
    STAGE_INDEX,
    STAGE_SLICE,
    TAG_INDEX_RUN,
    TAG_REASON,
    TAG_STAGE,
    TAG_TABLE,
    TAG_TRIGGER,
    AssetJob,
    TableNames,
)

FANOUT_INTERVAL_S = 10


def make_slice_fanout_sensor(
    tables: Sequence[TableNames], jobs: Sequence["AssetJob"]
) -> dg.RunStatusSensorDefinition:
    """After a table's target index is rebuilt, request one reconciliation run per token slice.

    Reconciling a table is two steps: one pass over PostgreSQL builds the target index
    (the run requested by the lag and DLQ sensors and the nightly schedule, tagged
    ``cdc/stage=index``); then every slice diffs the source against it. Each slice is
    its own run of the table's reconcile job, so slices run side by side in separate
    processes, at most as many per table as dagster.yaml's ``cdc/table`` limit allows.
    A run's partition is its slice's key (id and token range); its run key ends in the id.
    """
    by_source = {n.source: n for n in tables}

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="reconcile_slices_after_index",
        minimum_interval_seconds=FANOUT_INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        request_jobs=list(jobs),
        description=inspect.cleandoc(make_slice_fanout_sensor.__doc__ or ""),
    )
    def reconcile_slices_after_index(
        context: dg.RunStatusSensorContext,
    ) -> list[dg.RunRequest] | dg.SkipReason:
        run = context.dagster_run
        if run.tags.get(TAG_STAGE) != STAGE_INDEX:
            return dg.SkipReason(f"run {run.run_id} did not build a target index")
        names = by_source.get(run.tags.get(TAG_TABLE, ""))
        if names is None:
            return dg.SkipReason(f"run {run.run_id} names no declared table")
        reason = run.tags.get(TAG_REASON, "manual")
        trigger = run.tags.get(TAG_TRIGGER, run.run_id)
        return [
            dg.RunRequest(
                run_key=f"{run.run_id}:{slice_id}",
                job_name=names.reconcile_job,
                asset_selection=[names.reconciliation_key],
                partition_key=names.partition_key(slice_id),
                tags={**names.run_tags(reason, STAGE_SLICE, trigger), TAG_INDEX_RUN: run.run_id},
            )
            for slice_id in names.slice_ids
        ]

    return reconcile_slices_after_index
