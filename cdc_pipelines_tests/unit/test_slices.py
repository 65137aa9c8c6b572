"""Token slices partition the Murmur3 ring exactly, with stable ids, and sub-ranges tile a slice."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.ring.slices import (
    MAX_TOKEN,
    MIN_TOKEN,
    RING_SIZE,
    TokenRange,
    cql_token_bounds,
    slice_by_id,
    slice_id,
    slice_ids,
    slice_indices,
    token_slices,
)

tokens = st.integers(min_value=MIN_TOKEN, max_value=MAX_TOKEN)
counts = st.integers(min_value=1, max_value=4096)


@settings(deadline=None)
@given(counts)
def test_slices_cover_the_ring_without_gap_or_overlap(count: int) -> None:
    slices = token_slices(count)
    assert len(slices) == count
    assert slices[0].start == MIN_TOKEN
    assert slices[-1].end == MAX_TOKEN
    for left, right in itertools.pairwise(slices):
        assert left.end == right.start
    assert all(s.start < s.end for s in slices)
    sizes = [s.end - s.start for s in slices]
    assert sum(sizes) == RING_SIZE - 1
    assert max(sizes) - min(sizes) <= 1


@settings(deadline=None)
@given(counts, st.lists(tokens, min_size=1, max_size=50))
def test_every_token_falls_in_exactly_one_slice(count: int, values: list[int]) -> None:
    slices = token_slices(count)
    indices = slice_indices(np.array(values, dtype=np.int64), count)
    for token, index in zip(values, indices.tolist(), strict=True):
        owners = [s.index for s in slices if s.contains(token)]
        assert owners == [index]


def test_minimum_token_belongs_to_the_first_slice() -> None:
    assert slice_indices([MIN_TOKEN, MIN_TOKEN + 1, MAX_TOKEN], 8).tolist() == [0, 0, 7]


def test_slice_bounds_are_fixed_by_the_count() -> None:
    quarters = token_slices(4)
    assert [(s.start, s.end) for s in quarters] == [
        (MIN_TOKEN, -(2**62)),
        (-(2**62), 0),
        (0, 2**62),
        (2**62, MAX_TOKEN),
    ]


@pytest.mark.parametrize(
    ("count", "first", "last"),
    [
        (1, "00", "00"),
        (16, "00", "15"),
        (100, "00", "99"),
        (101, "000", "100"),
        (1000, "000", "999"),
    ],
)
def test_slice_ids_are_zero_padded_to_the_last_index(count: int, first: str, last: str) -> None:
    ids = slice_ids(count)
    assert (ids[0], ids[-1]) == (first, last)
    assert len({len(i) for i in ids}) == 1
    assert list(ids) == sorted(ids)


@settings(deadline=None)
@given(counts, st.data())
def test_slice_ids_round_trip(count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, count - 1))
    identifier = slice_id(index, count)
    assert slice_by_id(identifier, count) == token_slices(count)[index]
    assert token_slices(count)[index].id == identifier


@pytest.mark.parametrize("bad", ["16", "7", "007", "ab", "-1", ""])
def test_unknown_slice_ids_are_refused(bad: str) -> None:
    with pytest.raises(ReconcileError, match="not a slice id"):
        slice_by_id(bad, 16)


@pytest.mark.parametrize("count", [0, -3, 2**21])
def test_slice_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ReconcileError, match="slice count"):
        token_slices(count)


@settings(deadline=None)
@given(counts, st.data(), st.integers(1, 64))
def test_sub_ranges_tile_their_slice(count: int, data: st.DataObject, parts: int) -> None:
    chosen = token_slices(count)[data.draw(st.integers(0, count - 1))]
    pieces = chosen.sub_ranges(parts)
    assert len(pieces) == parts
    assert pieces[0].start == chosen.start
    assert pieces[-1].end == chosen.end
    for left, right in itertools.pairwise(pieces):
        assert left.end == right.start
    widths = [p.end - p.start for p in pieces]
    assert min(widths) > 0
    assert max(widths) - min(widths) <= 1


@settings(deadline=None)
@given(tokens, tokens)
def test_a_range_and_its_complement_hold_every_token_once(start: int, end: int) -> None:
    if start == end:
        assert TokenRange(start, end).size == RING_SIZE - 1
        return
    forward, backward = TokenRange(start, end), TokenRange(end, start)
    assert forward.size + backward.size == RING_SIZE - 1
    assert all(not part.wraps for part in forward.unwrap())


@settings(deadline=None)
@given(tokens, tokens, tokens)
def test_unwrapped_parts_contain_the_same_tokens(start: int, end: int, probe: int) -> None:
    token_range = TokenRange(start, end)
    inside = [part for part in token_range.unwrap() if part.start < probe <= part.end]
    assert len(inside) <= 1
    assert token_range.contains(probe) == bool(inside)


@settings(deadline=None)
@given(tokens, tokens, st.integers(1, 32))
def test_split_of_a_wrapping_range_covers_it(start: int, end: int, parts: int) -> None:
    token_range = TokenRange(start, end)
    pieces = token_range.split(parts)
    assert all(not p.wraps for p in pieces)
    assert sum(p.end - p.start for p in pieces) == token_range.size
    assert len(pieces) >= min(parts, len(token_range.unwrap()))


def test_wrapping_range_becomes_two_cql_queries() -> None:
    assert cql_token_bounds([TokenRange(100, -100)]) == [(100, MAX_TOKEN), (MIN_TOKEN, -100)]
    assert cql_token_bounds([TokenRange(MIN_TOKEN, 5)]) == [(MIN_TOKEN, 5)]


def test_slice_indices_read_arrow_arrays_and_refuse_nulls() -> None:
    chunked = pa.chunked_array([[MIN_TOKEN + 1], [0, MAX_TOKEN]], pa.int64())
    assert slice_indices(chunked, 2).tolist() == [0, 0, 1]
    with pytest.raises(ReconcileError, match="NULL"):
        slice_indices(pa.array([1, None], pa.int64()), 2)


def test_token_outside_the_ring_is_refused() -> None:
    with pytest.raises(ReconcileError, match="outside the Murmur3 ring"):
        TokenRange(0, 2**63)
