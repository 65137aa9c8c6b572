"""The tolerant verdict on row pairs whose hashes differ: which compared columns really differ.

Floats are equal within ``float_abs`` or ``float_rel`` (relative to the larger magnitude),
NaN equals NaN and ``-0.0`` equals ``0.0``; everything else is compared exactly, timestamps
having been truncated to the declared precision by the canonical form. NULL equals only NULL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cdc_pipelines.config import Tolerances
from cdc_pipelines.rows.canonical import CanonicalColumn

FLOAT_TYPES = frozenset({"float", "double"})


def _as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def floats_equal(
    source: npt.NDArray[np.float64], target: npt.NDArray[np.float64], tolerances: Tolerances
) -> npt.NDArray[np.bool_]:
    """Element-wise float equality under the tolerances (no NULLs: mask them beforehand)."""
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(source - target)
        scale = np.maximum(np.abs(source), np.abs(target))
        close = (difference <= tolerances.float_abs) | (difference <= tolerances.float_rel * scale)
    return close | (source == target) | (np.isnan(source) & np.isnan(target))


def column_differs(
    source: pa.Array | pa.ChunkedArray,
    target: pa.Array | pa.ChunkedArray,
    column: CanonicalColumn,
    tolerances: Tolerances,
) -> npt.NDArray[np.bool_]:
    """Whether each source value differs from the target value beside it."""
    left, right = _as_array(source), _as_array(target)
    left_null = left.is_null().to_numpy(zero_copy_only=False)
    right_null = right.is_null().to_numpy(zero_copy_only=False)
    if column.cql_type.name in FLOAT_TYPES:
        left_values = pc.fill_null(left, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        right_values = pc.fill_null(right, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
        equal = floats_equal(left_values, right_values, tolerances)
    else:
        equal = pc.fill_null(pc.equal(left, right), False).to_numpy(zero_copy_only=False)
    same = (left_null & right_null) | (~left_null & ~right_null & equal)
    return ~same


def differing_columns(
    source: pa.Table,
    target: pa.Table,
    columns: Sequence[CanonicalColumn],
    tolerances: Tolerances,
) -> npt.NDArray[np.bool_]:
    """A ``(rows, len(columns))`` mask: True where the pair's values differ beyond tolerance."""
    if source.num_rows != target.num_rows:
        raise ValueError("source and target must hold the same number of paired rows")
    mask = np.zeros((source.num_rows, len(columns)), dtype=bool)
    for position, column in enumerate(columns):
        mask[:, position] = column_differs(
            source.column(column.name), target.column(column.name), column, tolerances
        )
    return mask
