"""A per-slice progress display for long reconciliations (stderr, one line per event)."""

from __future__ import annotations

import time
from typing import TextIO

REDRAW_INTERVAL_S = 0.5
BAR_WIDTH = 30


class SliceProgress:
    """Counts rows and finished slices; draws a bar on a terminal, plain lines otherwise."""

    def __init__(self, slice_count: int, stream: TextIO) -> None:
        self.slice_count = slice_count
        self.stream = stream
        self.done = 0
        self.rows = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())

    def phase(self, text: str) -> None:
        self._line(f"{text}")

    def add_rows(self, count: int) -> None:
        self.rows += count
        if self._tty and time.monotonic() - self._last_draw > REDRAW_INTERVAL_S:
            self._draw()

    def slice_done(self, slice_id: str, discrepancies: int, rows: int) -> None:
        self.done += 1
        mark = "ok" if discrepancies == 0 else f"{discrepancies} candidate(s)"
        self._line(f"slice {slice_id} [{self.done}/{self.slice_count}] {rows} rows: {mark}")

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        filled = int(BAR_WIDTH * self.done / max(1, self.slice_count))
        elapsed = max(1e-9, time.monotonic() - self.started)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.slice_count} slices, {self.rows} rows, "
            f"{self.rows / elapsed:,.0f} rows/s"
        )
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self._tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        if self._tty:
            self._draw()

    def close(self) -> None:
        elapsed = time.monotonic() - self.started
        self._line(f"{self.rows} rows in {elapsed:.1f}s")


class CountProgress:
    """A bar over a known number of items (e.g. dead letters replayed), drawn on a terminal only."""

    def __init__(self, total: int, stream: TextIO, unit: str = "items") -> None:
        self.total = total
        self.stream = stream
        self.unit = unit
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = False

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        if self._tty and time.monotonic() - self._last_draw > REDRAW_INTERVAL_S:
            self._last_draw = time.monotonic()
            filled = int(BAR_WIDTH * done / max(1, self.total))
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} {self.unit}")
            self.stream.flush()
            self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
