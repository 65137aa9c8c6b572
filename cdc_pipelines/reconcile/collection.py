"""Cyclic garbage collection once per chunk instead of every few hundred allocations.

Verifying and planning a chunk allocates a few objects per value (driver rows, keys,
verdicts, converted rows). With the collector's default thresholds, those allocations set
off a young-generation collection every 700 of them, and each one walks the chunk's live
rows again: measured on a 1M-row load, a fifth of a worker's time (docs/benchmarks.md).
Rows are freed by reference counting as soon as their chunk is done; cycles (few, mostly
the driver's) wait for the collection run between chunks.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

COLLECTED_GENERATION = 1  # between chunks: what the chunk left, never the whole heap


@contextmanager
def collected_per_chunk() -> Iterator[None]:
    """Pause automatic collection; a ``collect_chunk()`` call collects what a chunk left.
    The collector's state is restored on exit, also on error."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def collect_chunk() -> None:
    """Collect the cycles the last chunk left (young generations only)."""
    gc.collect(COLLECTED_GENERATION)
