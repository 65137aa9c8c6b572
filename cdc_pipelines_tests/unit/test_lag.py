"""Properties of the lag evaluation: Burrow's status rules, time-lag interpolation, the window."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import assume, given
from hypothesis import strategies as st

from cdc_pipelines.kafka import lag
from cdc_pipelines.kafka.lag import (
    LAG_WINDOW_SIZE,
    MIN_SAMPLES_FOR_TREND,
    LagStatus,
    LagWindow,
    PartitionSample,
    TableLagState,
    Tick,
    partition_status,
    time_lag,
)

NOW_MS = 1_800_000_000_000
offsets = st.integers(min_value=0, max_value=10**9)
alive = st.integers(min_value=1, max_value=8)


def sample(committed: int, end: int, ts: int | None = None) -> PartitionSample:
    return PartitionSample(log_start=0, log_end=end, committed=committed, end_timestamp_ms=ts)


@st.composite
def lagging_history(
    draw: st.DrawFn, min_size: int = 1, max_size: int = LAG_WINDOW_SIZE
) -> list[PartitionSample]:
    """Samples whose lag is never zero: committed + lag, with arbitrary positions."""
    size = draw(st.integers(min_size, max_size))
    positions = draw(st.lists(offsets, min_size=size, max_size=size))
    lags = draw(st.lists(st.integers(1, 10**6), min_size=size, max_size=size))
    return [sample(p, p + g) for p, g in zip(positions, lags, strict=True)]


def with_members(
    samples: list[PartitionSample], members: int | None = 1
) -> list[tuple[PartitionSample, int | None]]:
    return [(s, members) for s in samples]


# --- Burrow's rules -----------------------------------------------------------------


@given(lagging_history(), offsets, st.one_of(st.none(), st.integers(0, 8)))
def test_no_lag_now_is_ok_whatever_happened_before(history, position, members):
    history = [*history, sample(position, position)]
    assert partition_status(with_members(history, members)) is LagStatus.OK


@given(lagging_history())
def test_lag_with_no_live_consumer_is_stop(history):
    assert partition_status(with_members(history, 0)) is LagStatus.STOP


@given(
    lagging_history(min_size=1, max_size=LAG_WINDOW_SIZE - 1),
    st.integers(0, LAG_WINDOW_SIZE - 2),
    alive,
)
def test_lag_that_reached_zero_in_the_window_is_ok(history, where, members):
    where = min(where, len(history) - 1)
    caught_up = sample(history[where].position, history[where].position)
    history = [*history[:where], caught_up, *history[where:]]
    assert partition_status(with_members(history, members)) is LagStatus.OK


@given(lagging_history(min_size=2), alive)
def test_an_offset_going_back_is_rewind(history, members):
    assume(any(b.position < a.position for a, b in pairwise(history)))
    assert partition_status(with_members(history, members)) is LagStatus.REWIND


@given(
    offsets,
    st.lists(st.integers(1, 10**6), min_size=MIN_SAMPLES_FOR_TREND, max_size=LAG_WINDOW_SIZE),
    alive,
)
def test_an_offset_that_never_moves_is_stall(position, lags, members):
    history = [sample(position, position + g) for g in lags]
    assert partition_status(with_members(history, members)) is LagStatus.STALL


@given(
    offsets,
    st.lists(st.integers(0, 1000), min_size=MIN_SAMPLES_FOR_TREND, max_size=LAG_WINDOW_SIZE),
    st.lists(st.integers(0, 1000), min_size=LAG_WINDOW_SIZE, max_size=LAG_WINDOW_SIZE),
    st.integers(1, 1000),
    alive,
)
def test_moving_but_never_catching_up_is_warn(start, steps, growth, first_lag, members):
    assume(any(steps[1:]))
    positions, lags = [start], [first_lag]
    for step, more in zip(steps[1:], growth, strict=False):
        positions.append(positions[-1] + step)
        lags.append(lags[-1] + more)
    history = [sample(p, p + g) for p, g in zip(positions, lags, strict=True)]
    assert partition_status(with_members(history, members)) is LagStatus.WARN


@st.composite
def catching_up(draw: st.DrawFn) -> list[PartitionSample]:
    """Positions that move forward and a lag that is never zero but shrinks at least once."""
    size = draw(st.integers(MIN_SAMPLES_FOR_TREND, LAG_WINDOW_SIZE))
    steps = draw(st.lists(st.integers(0, 1000), min_size=size - 1, max_size=size - 1))
    steps[draw(st.integers(0, size - 2))] += 1
    lags = draw(st.lists(st.integers(2, 10**6), min_size=size, max_size=size))
    k = draw(st.integers(0, size - 2))
    lags[k + 1] = min(lags[k + 1], lags[k] - 1)
    positions = [draw(offsets)]
    for step in steps:
        positions.append(positions[-1] + step)
    return [sample(p, p + g) for p, g in zip(positions, lags, strict=True)]


@given(catching_up(), alive)
def test_moving_forward_with_lag_shrinking_once_is_ok(history, members):
    assert partition_status(with_members(history, members)) is LagStatus.OK


@given(lagging_history(max_size=MIN_SAMPLES_FOR_TREND - 1), alive)
def test_too_few_samples_are_no_evidence_of_a_stall_or_slowness(history, members):
    assume(all(b.position >= a.position for a, b in pairwise(history)))
    assert partition_status(with_members(history, members)) is LagStatus.OK


@given(
    st.lists(lagging_history(min_size=3, max_size=3), min_size=1, max_size=6),
    st.sampled_from([0, 1, None]),
)
def test_the_table_status_is_its_worst_partition(partition_histories, members):
    ticks = []
    for i in range(3):
        parts = {p: history[i] for p, history in enumerate(partition_histories)}
        ticks.append(Tick(NOW_MS + i * 30_000, members, parts))
    window = LagWindow(tuple(ticks))
    expected = lag.worst(
        [partition_status(window.history(p)) for p in range(len(partition_histories))]
    )
    evaluation = lag.evaluate(window, NOW_MS + 90_000)
    assert evaluation.status is expected
    assert evaluation.lag_messages == sum(h[-1].lag for h in partition_histories)


# --- time lag ---------------------------------------------------------------------


@st.composite
def produced(draw: st.DrawFn) -> list[PartitionSample]:
    """Samples of a partition whose end offset and newest timestamp both grow over time."""
    size = draw(st.integers(1, LAG_WINDOW_SIZE))
    ends = sorted(draw(st.lists(st.integers(1, 10**6), min_size=size, max_size=size, unique=True)))
    gaps = draw(st.lists(st.integers(1, 60_000), min_size=size, max_size=size))
    stamps, t = [], NOW_MS - 3_600_000
    for gap in gaps:
        t += gap
        stamps.append(t)
    return [sample(0, e, ts) for e, ts in zip(ends, stamps, strict=True)]


@given(produced())
def test_a_caught_up_consumer_has_no_time_lag(samples):
    last = samples[-1]
    caught_up = [*samples[:-1], sample(last.log_end, last.log_end, last.end_timestamp_ms)]
    assert time_lag(caught_up, NOW_MS).seconds == 0.0


@given(produced(), st.data())
def test_time_lag_shrinks_as_the_consumer_advances(samples, data):
    end = samples[-1].log_end
    a = data.draw(st.integers(0, end - 1))
    b = data.draw(st.integers(a, end - 1))
    behind = [*samples[:-1], sample(a, end, samples[-1].end_timestamp_ms)]
    ahead = [*samples[:-1], sample(b, end, samples[-1].end_timestamp_ms)]
    lag_a, lag_b = time_lag(behind, NOW_MS), time_lag(ahead, NOW_MS)
    assert lag_a.seconds is not None and lag_b.seconds is not None
    assert lag_b.seconds <= lag_a.seconds + 1e-9
    assert lag_b.seconds >= 0


@given(produced(), st.data())
def test_time_lag_is_exact_at_a_sampled_message(samples, data):
    point = data.draw(st.sampled_from(samples))
    position = point.log_end - 1
    last = samples[-1]
    history = [*samples[:-1], sample(position, last.log_end, last.end_timestamp_ms)]
    assume(history[-1].lag > 0)
    result = time_lag(history, NOW_MS)
    assert result.seconds == (NOW_MS - point.end_timestamp_ms) / 1000
    assert not result.lower_bound


@given(produced())
def test_a_position_older_than_the_window_gives_a_lower_bound(samples):
    first = samples[0]
    assume(first.log_end - 1 > 0)
    last = samples[-1]
    history = [*samples[:-1], sample(0, last.log_end, last.end_timestamp_ms)]
    result = time_lag(history, NOW_MS)
    assert result.lower_bound
    assert result.seconds == (NOW_MS - first.end_timestamp_ms) / 1000


def test_time_lag_interpolates_between_two_samples():
    samples = [sample(0, 101, NOW_MS - 100_000), sample(0, 201, NOW_MS - 50_000)]
    history = [samples[0], sample(150, 201, NOW_MS - 50_000)]
    # Message 150 lies halfway between messages 100 (−100 s) and 200 (−50 s).
    assert time_lag(history, NOW_MS).seconds == 75.0
    assert time_lag(samples, NOW_MS).lower_bound


def test_time_lag_is_unknown_without_timestamps():
    assert time_lag([sample(0, 10)], NOW_MS).seconds is None


# --- window, incidents, cursor ----------------------------------------------------------


ticks = st.builds(
    Tick,
    at_ms=st.integers(NOW_MS, NOW_MS + 10**7),
    members=st.one_of(st.none(), st.integers(0, 5)),
    partitions=st.dictionaries(
        st.integers(0, 5),
        st.builds(
            PartitionSample,
            log_start=st.integers(0, 10),
            log_end=offsets,
            committed=st.one_of(st.none(), offsets),
            end_timestamp_ms=st.one_of(st.none(), st.integers(0, NOW_MS)),
        ),
        max_size=4,
    ),
)


@given(st.lists(ticks, max_size=3 * LAG_WINDOW_SIZE))
def test_the_window_is_bounded_ordered_and_survives_json(sequence):
    window = LagWindow()
    for tick in sequence:
        window = window.add(tick)
    assert len(window.ticks) <= LAG_WINDOW_SIZE
    assert all(a.at_ms < b.at_ms for a, b in pairwise(window.ticks))
    assert LagWindow.from_json(window.to_json()) == window


@given(st.lists(st.sampled_from(list(LagStatus)), min_size=1, max_size=30))
def test_a_recovery_is_reported_once_per_incident_with_its_start_and_worst(statuses):
    # Drive advance() with ticks whose single partition yields each wanted status.
    shapes = {
        LagStatus.OK: (lambda i: (sample(i, i), 1)),
        LagStatus.STOP: (lambda i: (sample(i, i + 5), 0)),
    }
    state = TableLagState()
    incident_start = None
    worst_seen: list[LagStatus] = []
    for i, wanted in enumerate(statuses):
        at = NOW_MS + i * 1000
        simple = wanted if wanted in shapes else LagStatus.STOP
        partition, members = shapes[simple](10 * (i + 1))
        state, evaluation, recovery = lag.advance(state, Tick(at, members, {0: partition}), at)
        assert evaluation.status is simple
        if simple is LagStatus.OK:
            if incident_start is None:
                assert recovery is None
            else:
                assert recovery == lag.Recovery(incident_start, lag.worst(worst_seen))
            incident_start, worst_seen = None, []
        else:
            assert recovery is None
            incident_start = incident_start if incident_start is not None else at
            worst_seen.append(simple)
            assert state.incident_started_ms == incident_start


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20), st.lists(ticks, max_size=LAG_WINDOW_SIZE), max_size=5
    )
)
def test_the_cursor_round_trips(windows):
    states = {}
    for table, sequence in windows.items():
        window = LagWindow()
        for tick in sequence:
            window = window.add(tick)
        states[table] = TableLagState(window, LagStatus.STALL, NOW_MS, LagStatus.STOP)
    assert lag.loads(lag.dumps(states)) == states


@given(st.one_of(st.none(), st.text(max_size=50)))
def test_a_foreign_cursor_starts_from_scratch(cursor):
    assert isinstance(lag.loads(cursor), dict)


def test_a_hundred_tables_fit_a_small_cursor():
    tick = Tick(NOW_MS, 1, {p: sample(10**9, 10**9 + 5_000, NOW_MS) for p in range(3)})
    window = LagWindow()
    for i in range(LAG_WINDOW_SIZE):
        window = window.add(Tick(tick.at_ms + i * 30_000, 1, tick.partitions))
    cursor = lag.dumps({f"ks.table_{i}": TableLagState(window) for i in range(100)})
    assert len(cursor) < 200_000
