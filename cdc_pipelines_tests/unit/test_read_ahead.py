"""The target read-ahead keeps order, re-raises the producer's error and stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cdc_pipelines.postgres.arrow_read import read_ahead


def test_items_arrive_in_order() -> None:
    with read_ahead(iter(range(50)), depth=2) as items:
        assert list(items) == list(range(50))


def test_a_producer_error_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("block 2 is not readable")

    consumed = []
    with pytest.raises(ValueError, match="block 2 is not readable"), read_ahead(failing()) as items:
        for item in items:
            consumed.append(item)
    assert consumed == [1]


def test_leaving_early_stops_the_producer_before_the_context_exits() -> None:
    produced = []
    finished = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            finished.set()

    with read_ahead(endless(), depth=2) as items:
        assert next(items) == 0

    assert finished.is_set(), "the producer was still running when the context exited"
    assert len(produced) <= 5  # at most the queue's depth ahead, plus the batch in hand


def test_a_producer_blocked_in_a_read_is_cancelled() -> None:
    release = threading.Event()
    cancelled = []

    def blocked() -> Iterator[int]:
        yield 0
        release.wait(30)  # a read that only a cancel ends
        raise RuntimeError("query cancelled")

    def cancel() -> None:
        cancelled.append(True)
        release.set()

    with read_ahead(blocked(), cancel=cancel) as items:
        assert next(items) == 0

    assert cancelled == [True]
    assert release.is_set()


def test_a_failing_cancel_neither_hides_the_error_nor_leaves_the_reader_running() -> None:
    release = threading.Event()

    def blocked() -> Iterator[int]:
        yield 0
        release.wait(30)
        yield 1

    def cancel() -> None:
        release.set()  # the read ends on its own, as a query that runs out would
        raise RuntimeError("could not open the cancel connection")

    with (
        pytest.raises(ValueError, match="bad batch"),
        read_ahead(blocked(), cancel=cancel) as items,
    ):
        next(items)
        raise ValueError("bad batch")
    assert release.is_set()
