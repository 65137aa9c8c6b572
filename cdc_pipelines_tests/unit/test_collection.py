"""Garbage collection paused in slice workers: cycles are still freed, state is restored."""

from __future__ import annotations

import gc
import weakref

import pytest

from cdc_pipelines.reconcile.collection import collect_chunk, collected_per_chunk


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_a_cycle_that_outlives_several_chunks_is_freed_by_the_next_chunk_collection() -> None:
    with collected_per_chunk():
        first, second = _Node(), _Node()
        first.other, second.other = second, first
        alive = weakref.ref(first)
        for _ in range(3):  # alive through several collections: no longer young
            collect_chunk()
        assert alive() is not None
        del first, second
        collect_chunk()
        assert alive() is None


def test_automatic_collection_is_paused_inside_and_restored_after_an_error() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collected_per_chunk():
        assert not gc.isenabled()
        raise RuntimeError("chunk failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_objects_from_before_the_pause_are_left_to_the_normal_collector() -> None:
    before = _cycle()
    with collected_per_chunk():
        collect_chunk()
        assert before() is not None  # frozen: a chunk collection does not walk it
    gc.collect()
    assert before() is None


def test_a_freeze_made_outside_is_left_in_place() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collected_per_chunk():
            collect_chunk()
        # Not unfrozen by the chunk's exit (that would empty it): only objects other threads
        # freed meanwhile may have left the permanent generation.
        assert gc.get_freeze_count() > 0.9 * frozen
    finally:
        gc.unfreeze()
