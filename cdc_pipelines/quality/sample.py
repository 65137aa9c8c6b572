"""An explicit, bounded sample of a source table for source-side expectations.

Rows are read from a few disjoint token ranges cut at random, each ``LIMIT``ed, so the
sample is spread over the cluster, holds no row twice and never grows with the table.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from decimal import Decimal
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from cdc_pipelines.config import TableSpec
from cdc_pipelines.ring.slices import MAX_TOKEN, MIN_TOKEN
from cdc_pipelines.scylla.session import quote_cql

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_ROWS = 10_000
SAMPLE_SPANS = 4
SAMPLE_TIMEOUT_S = 30.0


def sample_source_rows(
    session: Any,
    table: TableSpec,
    columns: Sequence[str],
    limit: int = SAMPLE_ROWS,
    spans: int = SAMPLE_SPANS,
    seed: int | None = None,
) -> pd.DataFrame:
    """Up to about ``limit`` rows of ``columns``: ``LIMIT``ed reads of disjoint token ranges cut at random."""
    import pandas as pd

    names = list(dict.fromkeys(columns)) or [table.partition_key[0]]
    selected = ", ".join(quote_cql(c) for c in names)
    key = ", ".join(quote_cql(c) for c in table.partition_key)
    source = f"{quote_cql(table.keyspace)}.{quote_cql(table.table)}"
    generator = random.Random(seed)
    cuts = sorted({generator.randint(MIN_TOKEN + 1, MAX_TOKEN - 1) for _ in range(spans)})
    # Disjoint ranges (cut_i, cut_i+1] plus the wrap-around, so no row is read twice.
    ranges = [*pairwise(cuts), (cuts[-1], MAX_TOKEN), (MIN_TOKEN, cuts[0])]
    per_range = max(1, limit // len(ranges))
    # Identifiers are quoted by quote_cql and the bounds are bound values.
    statement = session.prepare(
        f"SELECT {selected} FROM {source} WHERE token({key}) > ? AND token({key}) <= ? "  # noqa: S608
        f"LIMIT {per_range}"
    )
    rows: list[Sequence[object]] = []
    for start, end in ranges:
        if start < end:
            rows.extend(session.execute(statement, (start, end), timeout=SAMPLE_TIMEOUT_S))
    frame = pd.DataFrame.from_records(
        [tuple(_plain(v) for v in r) for r in rows[:limit]], columns=names
    )
    return frame


def _plain(value: object) -> object:
    # Decimals compare with the declared float bounds; everything else stays as the driver gave it.
    if isinstance(value, Decimal):
        return float(value)
    return value
