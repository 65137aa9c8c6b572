"""Target rows re-read by key point into their read's table; gathered back in any order."""

from __future__ import annotations

import pyarrow as pa

from cdc_pipelines.postgres.key_reads import TargetRow, canonical_rows


def test_rows_from_several_reads_are_gathered_in_the_order_asked() -> None:
    first = pa.table({"id": [10, 11, 12], "v": [1, 2, None]})
    second = pa.table({"id": [20, 21], "v": [3, 4]})
    rows = [
        TargetRow(first, 2, None),
        TargetRow(first, 0, 1),
        TargetRow(second, 1, 4),
        TargetRow(first, 1, 2),
    ]
    gathered = canonical_rows(rows)
    assert gathered.column("id").to_pylist() == [12, 10, 21, 11]
    assert [r.values for r in rows] == [(12, None), (10, 1), (21, 4), (11, 2)]
    assert rows[2].canonical.to_pylist() == [{"id": 21, "v": 4}]
