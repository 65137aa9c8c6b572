"""The Murmur3 token ring cut into N stable slices, and slices cut into sub-ranges for paging.

A slice is the unit of one reconciliation partition (ids ``00``…``NN``); ranges are
``(start, end]`` like Cassandra's, so a CQL scan reads ``token(pk) > start AND token(pk) <= end``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cdc_pipelines.errors import ReconcileError

MIN_TOKEN = -(2**63)
"""Murmur3Partitioner's minimum token: never the token of a stored row, only a range bound."""
MAX_TOKEN = 2**63 - 1
RING_SIZE = 2**64
MIN_SLICE_ID_WIDTH = 2
MAX_SLICE_COUNT = 1 << 20


@dataclass(frozen=True, order=True)
class TokenRange:
    """Tokens ``t`` with ``start < t <= end``; ``start >= end`` wraps past the end of the ring.

    As in Cassandra, ``(t, t]`` is the whole ring.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        for name, bound in (("start", self.start), ("end", self.end)):
            if not MIN_TOKEN <= bound <= MAX_TOKEN:
                raise ReconcileError(
                    f"token range {name} {bound} is outside the Murmur3 ring "
                    f"[{MIN_TOKEN}, {MAX_TOKEN}]; pass a signed 64-bit token"
                )

    @property
    def wraps(self) -> bool:
        return self.start >= self.end

    @property
    def size(self) -> int:
        """How many tokens the range holds."""
        return sum(part.end - part.start for part in self.unwrap())

    def unwrap(self) -> tuple[TokenRange, ...]:
        """The range as non-wrapping ranges, each usable in one ``token() > ? AND token() <= ?`` query."""
        if not self.wraps:
            return (self,)
        parts = [TokenRange(self.start, MAX_TOKEN)] if self.start < MAX_TOKEN else []
        if self.end > MIN_TOKEN:
            parts.append(TokenRange(MIN_TOKEN, self.end))
        return tuple(parts)

    def contains(self, token: int) -> bool:
        return any(part.start < token <= part.end for part in self.unwrap())

    def split(self, parts: int) -> tuple[TokenRange, ...]:
        """Cut into ``parts`` non-wrapping sub-ranges of near-equal size, in ring order, no gap or overlap.

        A wrapping range yields at least one sub-range on each side of the ring's end.
        """
        if parts < 1:
            raise ReconcileError(f"cannot split a token range into {parts} parts; use 1 or more")
        pieces = self.unwrap()
        parts = max(parts, len(pieces))
        total = sum(p.end - p.start for p in pieces)
        result: list[TokenRange] = []
        # Each unwrapped piece gets a share of the parts proportional to its size (at least one).
        remaining_parts = parts
        for position, piece in enumerate(pieces):
            if position == len(pieces) - 1:
                share = remaining_parts
            else:
                share = max(
                    1, min(remaining_parts - 1, round(parts * (piece.end - piece.start) / total))
                )
            remaining_parts -= share
            result.extend(_split_plain(piece, share))
        return tuple(result)


def _split_plain(piece: TokenRange, parts: int) -> list[TokenRange]:
    width = piece.end - piece.start
    parts = min(parts, width)
    bounds = [piece.start + (width * i) // parts for i in range(parts)] + [piece.end]
    return [TokenRange(lo, hi) for lo, hi in itertools.pairwise(bounds)]


@dataclass(frozen=True)
class TokenSlice:
    """Slice ``index`` of ``count``: the tokens ``start < t <= end``; never wraps."""

    index: int
    count: int
    start: int
    end: int

    @property
    def id(self) -> str:
        return slice_id(self.index, self.count)

    @property
    def token_range(self) -> TokenRange:
        return TokenRange(self.start, self.end)

    def sub_ranges(self, parts: int) -> tuple[TokenRange, ...]:
        """The slice cut into ``parts`` contiguous sub-ranges (pages of one scan)."""
        return self.token_range.split(parts)

    def contains(self, token: int) -> bool:
        """Whether the slice owns ``token``; the first slice also owns ``MIN_TOKEN`` (see ``slice_indices``)."""
        return self.start < token <= self.end or (self.index == 0 and token == MIN_TOKEN)


def _check_count(count: int) -> None:
    if not 1 <= count <= MAX_SLICE_COUNT:
        raise ReconcileError(
            f"slice count {count} is out of range; declare between 1 and {MAX_SLICE_COUNT} slices"
        )


def slice_id_width(count: int) -> int:
    """Digits of a slice id: the width of ``count - 1``, at least two."""
    _check_count(count)
    return max(MIN_SLICE_ID_WIDTH, len(str(count - 1)))


def slice_id(index: int, count: int) -> str:
    """The stable id of slice ``index`` of ``count``: zero-padded, e.g. ``07`` of 16."""
    if not 0 <= index < count:
        raise ReconcileError(f"slice index {index} is not in 0..{count - 1}")
    return str(index).zfill(slice_id_width(count))


def slice_ids(count: int) -> tuple[str, ...]:
    """All slice ids in ring order; Dagster partition keys of the reconciliation asset."""
    return tuple(slice_id(i, count) for i in range(count))


def _bound(index: int, count: int) -> int:
    # The ring (MIN_TOKEN, MAX_TOKEN] is cut at MIN_TOKEN + floor(i * 2^64 / count).
    return min(MIN_TOKEN + (index * RING_SIZE) // count, MAX_TOKEN)


@lru_cache(maxsize=64)
def token_slices(count: int) -> tuple[TokenSlice, ...]:
    """The ring cut into ``count`` contiguous slices of near-equal size, covering it exactly."""
    _check_count(count)
    return tuple(
        TokenSlice(index=i, count=count, start=_bound(i, count), end=_bound(i + 1, count))
        for i in range(count)
    )


def slice_by_id(identifier: str, count: int) -> TokenSlice:
    """The slice a partition key names; a malformed or unknown id is a :class:`ReconcileError`."""
    width = slice_id_width(count)
    if len(identifier) != width or not identifier.isdigit() or int(identifier) >= count:
        raise ReconcileError(
            f"{identifier!r} is not a slice id of a {count}-slice ring; "
            f"expected one of {slice_id(0, count)}…{slice_id(count - 1, count)}"
        )
    return token_slices(count)[int(identifier)]


@lru_cache(maxsize=64)
def _upper_bounds(count: int) -> npt.NDArray[np.int64]:
    return np.array([s.end for s in token_slices(count)], dtype=np.int64)


def slice_indices(
    tokens: npt.ArrayLike | pa.Array | pa.ChunkedArray, count: int
) -> npt.NDArray[np.int64]:
    """The slice index of each token, vectorized.

    ``MIN_TOKEN`` belongs to no ``(start, end]`` range; only an empty partition key (which
    Cassandra refuses to store) hashes to it, so it is assigned to slice 0, where such a
    target row is reported as extra instead of being lost.
    """
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    if isinstance(tokens, pa.Array):
        if tokens.null_count:
            raise ReconcileError(f"{tokens.null_count} token(s) are NULL; every row needs a token")
        tokens = tokens.to_numpy(zero_copy_only=False)
    values = np.asarray(tokens, dtype=np.int64)
    return np.searchsorted(_upper_bounds(count), values, side="left").astype(np.int64)


def cql_token_bounds(ranges: Sequence[TokenRange]) -> list[tuple[int, int]]:
    """``(start, end)`` pairs for ``token(pk) > ? AND token(pk) <= ?``, wrapping ranges unwrapped."""
    return [(part.start, part.end) for r in ranges for part in r.unwrap()]
