"""The target index's read-ahead keeps order, re-raises the producer's error and stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cdc_pipelines.postgres.target_index import _read_ahead


def test_items_arrive_in_order() -> None:
    assert list(_read_ahead(iter(range(50)), depth=2)) == list(range(50))


def test_a_producer_error_is_raised_in_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("block 2 is not CSV")

    consumed = []
    with pytest.raises(ValueError, match="block 2 is not CSV"):
        for item in _read_ahead(failing()):
            consumed.append(item)
    assert consumed == [1]


def test_leaving_early_stops_the_producer() -> None:
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

    reader = _read_ahead(endless(), depth=2)
    assert next(reader) == 0
    reader.close()

    assert finished.wait(5), "the producer kept running after the consumer left"
    assert len(produced) <= 5  # at most the queue's depth ahead, plus the batch in hand
