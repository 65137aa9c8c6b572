"""Plans convert a column at a time; the row-by-row path must agree on every input.

The column-wise path is the fast one; on any failure it hands over to the row-by-row path,
which names the row. For any rows, the plan (or the error) must be the same either way.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.postgres.repair import ExtraRow, checked_keys, plan, plan_repair
from cdc_pipelines_tests.declarations import replicated

TABLE = TableSpec.model_validate(
    {
        "source": "shop.items",
        "target": "shop.items",
        "partition_key": ["id"],
        "clustering_key": ["name"],
        "columns": {"id": "int", "name": "text", "price": "decimal", "at": "timestamp"},
    }
)
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

# Mostly valid rows (so most plans succeed), some with a value that fails a check, and
# keys drawn from a small range now and then, so some repeat.
ids = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 3))
names = st.sampled_from(["a", "b", "ключ"])
prices = st.decimals(allow_nan=False, places=2, max_value=10**6, min_value=-(10**6))
versions = st.integers(1, 2**62)
valid_row = st.tuples(ids, names, prices, st.just(NOW), versions)
bad_row = st.tuples(
    st.one_of(ids, st.just(2**40), st.just("7")),
    st.one_of(names, st.just("x\x00y"), st.none()),
    st.one_of(prices, st.none()),
    st.sampled_from([NOW, NOW.replace(tzinfo=None), None]),
    st.one_of(versions, st.none()),
)
rows = st.lists(valid_row, max_size=18, unique_by=lambda row: (row[0], row[1]))
key_values = st.tuples(st.one_of(ids, st.just(2**40)), st.one_of(names, st.none()))


def _both(call: Any) -> tuple[object, object]:
    def outcome() -> object:
        try:
            return call()
        except ReconcileError as exc:
            return ("error", str(exc))

    fast = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plan, "_by_columns", lambda *args, **kwargs: None)
        slow = outcome()
    return fast, slow


@settings(max_examples=300, deadline=None)
@given(
    valid=rows,
    cuts=st.tuples(st.integers(0, 18), st.integers(0, 18)),
    bad=bad_row,
    bad_in=st.sampled_from(["nowhere", "inserts", "upserts", "deletes"]),
)
def test_a_plan_is_the_same_column_wise_or_row_by_row(
    valid: list[Any], cuts: tuple[int, int], bad: Any, bad_in: str
) -> None:
    """Distinct valid keys split into inserts, upserts and deletes, and maybe one bad row
    (a value that fails, a NULL, or a key that may repeat one of the others)."""
    table = replicated(TABLE)
    low, high = sorted(cuts)
    inserts, upserts, deletes = valid[:low], valid[low:high], valid[high:]
    lists = {"inserts": inserts, "upserts": upserts, "deletes": deletes}
    if bad_in in lists:
        lists[bad_in].insert(len(lists[bad_in]) // 2, bad)
    extras = [ExtraRow((r[0], r[1]), r[4]) for r in deletes]

    def planned() -> object:
        made = plan_repair(table, upserts, extras, inserts=inserts, run_id="r1", now=NOW)
        return (made.inserts, made.upserts, made.deletes, made.digest)

    fast, slow = _both(planned)
    event("error" if isinstance(fast, tuple) and fast[0] == "error" else "planned")
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(key_values, max_size=8))
def test_checked_keys_are_the_same_column_wise_or_row_by_row(keys: list[Any]) -> None:
    fast, slow = _both(lambda: checked_keys(replicated(TABLE), keys))
    assert fast == slow
