"""Consumer-lag evaluation: a bounded window of samples, Burrow's status rules and time lag.

Pure functions over :class:`PartitionSample` values, so the rules are testable without
Kafka; the window serializes to a small JSON document that a sensor keeps in its cursor.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

LAG_WINDOW_SIZE = 10
"""Samples kept per table: at a 30 s sensor interval, five minutes of history."""
MIN_SAMPLES_FOR_TREND = 3
"""Fewer samples than this are not evidence of a stall or of falling behind (Burrow waits too)."""
WINDOW_FORMAT_VERSION = 1
MS_PER_S = 1000.0


class LagStatus(StrEnum):
    """Burrow's partition statuses, from healthy to worst."""

    OK = "OK"
    WARN = "WARN"
    REWIND = "REWIND"
    STALL = "STALL"
    STOP = "STOP"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {
    LagStatus.OK: 0,
    LagStatus.WARN: 1,
    LagStatus.REWIND: 2,
    LagStatus.STALL: 3,
    LagStatus.STOP: 4,
}


def worst(statuses: Sequence[LagStatus]) -> LagStatus:
    """The most severe status (OK for none)."""
    return max(statuses, key=lambda s: s.severity, default=LagStatus.OK)


@dataclass(frozen=True)
class PartitionSample:
    """One partition of the consumed topic as seen at one sampling time.

    ``committed`` is the group's committed offset (the next message it will read),
    ``None`` when the group never committed; ``end_timestamp_ms`` is the timestamp of
    the newest message (``None`` for an empty partition or when unknown).
    """

    log_start: int
    log_end: int
    committed: int | None
    end_timestamp_ms: int | None = None

    @property
    def position(self) -> int:
        """Where the consumer resumes: its commit, else the log start (``auto.offset.reset=earliest``)."""
        return self.committed if self.committed is not None else self.log_start

    @property
    def lag(self) -> int:
        return max(0, self.log_end - self.position)


@dataclass(frozen=True)
class Tick:
    """Every partition of one consumer group on one topic, sampled at ``at_ms``.

    ``members`` counts the group's live consumers (``None`` when it could not be read);
    zero members with lag means nothing is consuming.
    """

    at_ms: int
    members: int | None
    partitions: Mapping[int, PartitionSample]


@dataclass(frozen=True)
class PartitionVerdict:
    partition: int
    status: LagStatus
    lag_messages: int
    time_lag_s: float | None
    time_lag_is_lower_bound: bool = False


@dataclass(frozen=True)
class LagEvaluation:
    """The table-level verdict: the worst partition status, summed lag, largest time lag."""

    status: LagStatus
    lag_messages: int
    time_lag_s: float | None
    time_lag_is_lower_bound: bool
    samples: int
    partitions: tuple[PartitionVerdict, ...] = ()


@dataclass(frozen=True)
class LagWindow:
    """The most recent ticks of one group on one topic, oldest first, at most ``size``."""

    ticks: tuple[Tick, ...] = ()
    size: int = LAG_WINDOW_SIZE

    def add(self, tick: Tick) -> LagWindow:
        """The window with ``tick`` appended; a tick not newer than the last one replaces nothing."""
        if self.ticks and tick.at_ms <= self.ticks[-1].at_ms:
            return self
        return LagWindow((*self.ticks, tick)[-self.size :], self.size)

    def history(self, partition: int) -> tuple[tuple[PartitionSample, int | None], ...]:
        """The partition's samples with each tick's member count, oldest first."""
        return tuple(
            (tick.partitions[partition], tick.members)
            for tick in self.ticks
            if partition in tick.partitions
        )

    def to_json(self) -> Any:
        """A compact JSON-able form: per tick ``[at_ms, members, {p: [start, end, committed, ts]}]``."""
        return [
            [
                tick.at_ms,
                tick.members,
                {
                    str(p): [s.log_start, s.log_end, s.committed, s.end_timestamp_ms]
                    for p, s in sorted(tick.partitions.items())
                },
            ]
            for tick in self.ticks
        ]

    @classmethod
    def from_json(cls, data: Any, size: int = LAG_WINDOW_SIZE) -> LagWindow:
        """Parse :meth:`to_json` output; anything malformed yields an empty window."""
        try:
            ticks = tuple(
                Tick(
                    at_ms=int(at_ms),
                    members=None if members is None else int(members),
                    partitions={
                        int(p): PartitionSample(
                            int(v[0]),
                            int(v[1]),
                            None if v[2] is None else int(v[2]),
                            None if v[3] is None else int(v[3]),
                        )
                        for p, v in parts.items()
                    },
                )
                for at_ms, members, parts in data
            )
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            return cls(size=size)
        return cls(ticks[-size:], size)


def partition_status(history: Sequence[tuple[PartitionSample, int | None]]) -> LagStatus:
    """Burrow's rules over one partition's window, in Burrow's order.

    1. No lag now → OK.
    2. Lag and no live consumer in the group → STOP. (Burrow reads commit timestamps
       from ``__consumer_offsets``; the admin API has none, and a Connect sink does
       not re-commit an unchanged offset, so group membership is the liveness signal.)
    3. Lag reached zero somewhere in the window → OK.
    4. The position went backwards → REWIND.
    5. Too few samples for a trend → OK.
    6. The position never moved → STALL.
    7. The lag never decreased → WARN.
    8. Otherwise → OK.
    """
    if not history:
        return LagStatus.OK
    last, members = history[-1]
    if last.lag == 0:
        return LagStatus.OK
    if members == 0:
        return LagStatus.STOP
    samples = [sample for sample, _ in history]
    if any(s.lag == 0 for s in samples):
        return LagStatus.OK
    if any(b.position < a.position for a, b in pairwise(samples)):
        return LagStatus.REWIND
    if len(samples) < MIN_SAMPLES_FOR_TREND:
        return LagStatus.OK
    if all(s.position == samples[0].position for s in samples):
        return LagStatus.STALL
    if all(b.lag >= a.lag for a, b in pairwise(samples)):
        return LagStatus.WARN
    return LagStatus.OK


@dataclass(frozen=True)
class TimeLag:
    seconds: float | None
    lower_bound: bool = False


def time_lag(samples: Sequence[PartitionSample], now_ms: int) -> TimeLag:
    """How long ago the next unconsumed message was produced (kafka-lag-exporter's idea).

    Each sample says the newest message, at offset ``log_end - 1``, was produced at
    ``end_timestamp_ms``; the produce time of the consumer's position is interpolated
    between the two surrounding points. A position older than every point was
    produced no later than the oldest point, so the result is then a lower bound.
    Caught up → 0; no timestamps at all → unknown (``None``).
    """
    if not samples:
        return TimeLag(None)
    last = samples[-1]
    if last.lag == 0:
        return TimeLag(0.0)
    position = last.position
    points = _interpolation_points(samples)
    above = [(o, t) for o, t in points if o >= position]
    if not above:
        return TimeLag(None)
    hi_offset, hi_time = above[0]
    below = [(o, t) for o, t in points if o < position]
    if hi_offset == position or not below:
        produced_ms = float(hi_time)
        lower_bound = hi_offset != position
    else:
        lo_offset, lo_time = below[-1]
        fraction = (position - lo_offset) / (hi_offset - lo_offset)
        produced_ms = lo_time + fraction * (hi_time - lo_time)
        lower_bound = False
    return TimeLag(max(0.0, (now_ms - produced_ms) / MS_PER_S), lower_bound)


def _interpolation_points(samples: Sequence[PartitionSample]) -> list[tuple[int, int]]:
    # (offset of the newest message, its timestamp), sorted by offset with timestamps
    # made non-decreasing: producer CreateTime can go backwards, interpolation must not.
    by_offset: dict[int, int] = {}
    for sample in samples:
        if sample.end_timestamp_ms is not None and sample.log_end > sample.log_start:
            offset = sample.log_end - 1
            known = by_offset.get(offset)
            by_offset[offset] = (
                sample.end_timestamp_ms if known is None else min(known, sample.end_timestamp_ms)
            )
    points: list[tuple[int, int]] = []
    latest = None
    for offset in sorted(by_offset):
        stamp = by_offset[offset] if latest is None else max(latest, by_offset[offset])
        points.append((offset, stamp))
        latest = stamp
    return points


def evaluate(window: LagWindow, now_ms: int) -> LagEvaluation:
    """The table's status and lag from the partitions present in the newest tick."""
    if not window.ticks:
        return LagEvaluation(LagStatus.OK, 0, None, False, 0)
    verdicts = []
    for partition in sorted(window.ticks[-1].partitions):
        history = window.history(partition)
        samples = [sample for sample, _ in history]
        lag_time = time_lag(samples, now_ms)
        verdicts.append(
            PartitionVerdict(
                partition=partition,
                status=partition_status(history),
                lag_messages=samples[-1].lag,
                time_lag_s=lag_time.seconds,
                time_lag_is_lower_bound=lag_time.lower_bound,
            )
        )
    known = [v for v in verdicts if v.time_lag_s is not None]
    slowest = max(known, key=lambda v: v.time_lag_s or 0.0, default=None)
    return LagEvaluation(
        status=worst([v.status for v in verdicts]),
        lag_messages=sum(v.lag_messages for v in verdicts),
        time_lag_s=None if slowest is None else slowest.time_lag_s,
        time_lag_is_lower_bound=bool(slowest and slowest.time_lag_is_lower_bound),
        samples=len(window.ticks),
        partitions=tuple(verdicts),
    )


@dataclass(frozen=True)
class TableLagState:
    """What the lag sensor remembers about one table between ticks."""

    window: LagWindow = field(default_factory=LagWindow)
    status: LagStatus = LagStatus.OK
    incident_started_ms: int | None = None
    incident_worst: LagStatus = LagStatus.OK

    def to_json(self) -> Any:
        return {
            "w": self.window.to_json(),
            "s": self.status.value,
            "i": self.incident_started_ms,
            "iw": self.incident_worst.value,
        }

    @classmethod
    def from_json(cls, data: Any) -> TableLagState:
        if not isinstance(data, Mapping):
            return cls()
        try:
            return cls(
                window=LagWindow.from_json(data.get("w", [])),
                status=LagStatus(data.get("s", LagStatus.OK)),
                incident_started_ms=None if data.get("i") is None else int(data["i"]),
                incident_worst=LagStatus(data.get("iw", LagStatus.OK)),
            )
        except (TypeError, ValueError):
            return cls()


@dataclass(frozen=True)
class Recovery:
    """A table whose status returned to OK after an incident."""

    started_ms: int
    worst: LagStatus


def advance(
    state: TableLagState, tick: Tick, now_ms: int
) -> tuple[TableLagState, LagEvaluation, Recovery | None]:
    """Add a tick, evaluate, and track incidents: non-OK opens one, OK after non-OK closes it."""
    window = state.window.add(tick)
    evaluation = evaluate(window, now_ms)
    recovery = None
    if evaluation.status is not LagStatus.OK:
        started = state.incident_started_ms if state.incident_started_ms is not None else tick.at_ms
        incident_worst = worst([state.incident_worst, evaluation.status])
        return TableLagState(window, evaluation.status, started, incident_worst), evaluation, None
    if state.incident_started_ms is not None:
        recovery = Recovery(state.incident_started_ms, state.incident_worst)
    return TableLagState(window, LagStatus.OK), evaluation, recovery


def dumps(states: Mapping[str, TableLagState]) -> str:
    """The sensor cursor: one entry per table, sorted for stable diffs."""
    return json.dumps(
        {"v": WINDOW_FORMAT_VERSION, "tables": {k: states[k].to_json() for k in sorted(states)}},
        separators=(",", ":"),
    )


def loads(cursor: str | None) -> dict[str, TableLagState]:
    """Parse :func:`dumps`; an empty, foreign or older cursor starts from scratch."""
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    if not isinstance(data, Mapping) or data.get("v") != WINDOW_FORMAT_VERSION:
        return {}
    tables = data.get("tables")
    if not isinstance(tables, Mapping):
        return {}
    return {str(k): TableLagState.from_json(v) for k, v in tables.items()}
