"""Keys a repair wrote are checked at the source after the commit, even when the repair
failed part-way (its batches commit one by one, so some of the chunk may be in)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from cdc_pipelines.config import parse_config
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.postgres.repair import RepairOutcome, RepairPlan, plan_repair
from cdc_pipelines.reconcile.repair_step import PlannedChunk, apply_planned, take_back
from cdc_pipelines.replicated_table import resolve

DECLARATION = """
tables:
  - source: shop.items
    target: public.items
    partition_key: [id]
    columns: {id: int, label: text}
"""


@dataclass
class RecordingRepairer:
    """Applies nothing; the first ``fail_first`` applies raise as a lost connection would."""

    run_id: str = "run-1"
    fail_first: int = 0
    applied: list[RepairPlan] = field(default_factory=list)

    def apply(self, plan: RepairPlan) -> RepairOutcome:
        self.applied.append(plan)
        if len(self.applied) <= self.fail_first:
            raise ServiceError("the connection to PostgreSQL was lost")
        return RepairOutcome(self.run_id, upserted=0, deleted=len(plan.deletes), skipped_newer=0)


def chunk_writing(keys: list[int]) -> PlannedChunk:
    table = resolve(parse_config(DECLARATION), "shop.items")
    plan = plan_repair(table, [], [], run_id="run-1")
    return PlannedChunk(plan, tuple(((k,), 100 + k) for k in keys))


def test_keys_the_source_deleted_meanwhile_are_deleted_again() -> None:
    table = resolve(parse_config(DECLARATION), "shop.items")
    repairer = RecordingRepairer()
    asked: list[list[object]] = []

    def source_has(keys):
        asked.append(list(keys))
        return [k != (2,) for k in keys]

    removed = take_back(table, [((1,), 101), ((2,), 102)], repairer, source_has)
    assert asked == [[(1,), (2,)]]
    assert removed == 1
    (delete,) = repairer.applied
    assert len(delete.deletes) == 1


def test_a_chunk_that_fails_part_way_still_has_its_keys_checked() -> None:
    table = resolve(parse_config(DECLARATION), "shop.items")
    # A plan that is not empty (what it writes does not matter to the stand-in repairer).
    written = replace(plan_repair(table, [], [], run_id="run-1"), upserts=((1, "a", 101),))
    chunk = PlannedChunk(written, chunk_writing([1, 2, 3]).written)
    repairer = RecordingRepairer(fail_first=1)
    asked: list[list[object]] = []

    def source_has(keys):
        asked.append(list(keys))
        return [False] * len(keys)

    with pytest.raises(ServiceError, match="connection to PostgreSQL was lost"):
        apply_planned(table, chunk, repairer, source_has)
    assert asked == [[(1,), (2,), (3,)]]  # checked although the apply failed
    assert len(repairer.applied) == 2  # the failed chunk, then the take-back's deletes
    assert len(repairer.applied[1].deletes) == 3
