"""Row-count parity: do the source and target hold about the same number of rows?

Exact counts may differ only by the messages still in flight; an estimate on either
side widens the allowance by a relative tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdc_pipelines.quality.counts import RowCount

ESTIMATE_REL_TOLERANCE = 0.05
"""How far apart estimates may be, relative to the larger side."""
ABSOLUTE_SLACK_ROWS = 0
"""Extra rows of difference allowed even between exact counts with nothing in flight."""


@dataclass(frozen=True)
class ParityVerdict:
    passed: bool
    difference: int | None
    allowed: int | None
    reason: str


def evaluate_parity(
    source: RowCount,
    target: RowCount,
    in_flight: int,
    rel_tolerance: float = ESTIMATE_REL_TOLERANCE,
    slack: int = ABSOLUTE_SLACK_ROWS,
) -> ParityVerdict:
    """Pass when ``|source - target| <= in_flight + slack (+ rel_tolerance × max when estimated)``."""
    if source.rows is None or target.rows is None:
        side = "source" if source.rows is None else "target"
        method = source.method if source.rows is None else target.method
        return ParityVerdict(False, None, None, f"the {side} row count is unknown: {method}")
    difference = abs(source.rows - target.rows)
    allowed = max(0, in_flight) + slack
    if not (source.exact and target.exact):
        allowed += int(rel_tolerance * max(source.rows, target.rows))
    passed = difference <= allowed
    relation = "within" if passed else "beyond"
    return ParityVerdict(
        passed,
        difference,
        allowed,
        f"source {source.rows} ({source.method}) vs target {target.rows} ({target.method}): "
        f"difference {difference} is {relation} the allowance of {allowed}",
    )
