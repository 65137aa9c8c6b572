"""A slice is routed by its first part: that part and the rest read after it are the slice,
and the target index rows of a token range are exactly those whose token lies in it."""

from __future__ import annotations

import itertools

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipelines.postgres.target_index import TOKEN_COLUMN
from cdc_pipelines.reconcile.diff_step import after_first_part, in_token_range
from cdc_pipelines.ring.slices import MAX_TOKEN, MIN_TOKEN, TokenRange, slice_by_id, slice_ids

counts = st.integers(min_value=1, max_value=4096)
parts = st.integers(min_value=1, max_value=64)
tokens = st.integers(min_value=MIN_TOKEN, max_value=MAX_TOKEN)


@settings(deadline=None)
@given(counts, parts, st.data())
def test_the_first_part_and_the_rest_tile_the_slice(
    count: int, first_of: int, data: st.DataObject
) -> None:
    token_slice = slice_by_id(data.draw(st.sampled_from(slice_ids(count))), count)
    first = token_slice.sub_ranges(first_of)[0]
    rest = after_first_part(first, token_slice)
    ranges = [first, *rest]
    assert ranges[0].start == token_slice.start and ranges[-1].end == token_slice.end
    assert all(left.end == right.start for left, right in itertools.pairwise(ranges))
    assert all(r.start < r.end for r in ranges)  # none wraps: (t, t] would be the whole ring
    if first_of == 1:
        assert rest == ()


@given(st.lists(tokens, max_size=50), tokens, tokens)
def test_index_rows_in_a_range_are_those_whose_token_it_holds(
    row_tokens: list[int], start: int, end: int
) -> None:
    start, end = min(start, end), max(start, end)
    index = pa.table({"id": pa.array(range(len(row_tokens)), pa.int64()), TOKEN_COLUMN: row_tokens})
    inside = in_token_range(index, TokenRange(start, end))
    assert inside.column("id").to_pylist() == [
        i for i, t in enumerate(row_tokens) if start < t <= end
    ]


def test_a_range_from_the_minimum_token_holds_the_rows_the_first_slice_owns_there() -> None:
    """Only a target row can have ``MIN_TOKEN`` (the first slice owns it): a chunk whose
    span starts there must diff it, or it would be counted and never verified."""
    index = pa.table({"id": [0, 1, 2], TOKEN_COLUMN: [MIN_TOKEN, MIN_TOKEN + 1, 5]})
    first = slice_by_id("00", 2)
    assert first.contains(MIN_TOKEN)
    assert in_token_range(index, TokenRange(MIN_TOKEN, 5)).column("id").to_pylist() == [0, 1, 2]
    assert in_token_range(index, TokenRange(MIN_TOKEN + 1, 5)).column("id").to_pylist() == [2]
