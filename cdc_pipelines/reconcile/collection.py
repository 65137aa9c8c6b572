"""Cyclic garbage collection once per chunk instead of every few hundred allocations.

Verifying and planning a chunk allocates a few objects per value (driver rows, keys,
verdicts, converted rows). With the collector's default thresholds, those allocations set
off a young-generation collection every 700 of them, and each one walks the chunk's live
rows again: measured on a 1M-row load, a fifth of a worker's time (docs/benchmarks.md,
"Where the time goes").
Rows are freed by reference counting as soon as their chunk is done; cycles (few, mostly
the driver's) wait for the collection run between chunks. That collection is a full one,
or cycles that outlive one chunk would never be freed (memory would follow the slice);
the objects that existed before the slice (modules, the table) are frozen out of it, so
it walks only what the slice created.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collected_per_chunk() -> Iterator[None]:
    """Pause automatic collection; a ``collect_chunk()`` call collects what a chunk left.
    The collector's state is restored on exit, also on error."""
    enabled = gc.isenabled()
    freezing = gc.get_freeze_count() == 0  # someone else's freeze is theirs to undo
    gc.disable()
    if freezing:
        gc.freeze()
    try:
        yield
    finally:
        if freezing:
            gc.unfreeze()
        if enabled:
            gc.enable()


def collect_chunk() -> None:
    """Collect the cycles left so far (of objects created since the pause)."""
    gc.collect()
