"""A slice re-read by one scan answers exactly what a re-read by key answers.

Verification re-reads a slice's candidates by scanning its token range when they are a
large share of its rows; the rows and versions it hands over must be those of the key
re-read, for every key shape (the layouts of ``test_key_reads``), keys absent included.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from cdc_pipelines.config import TableSpec
from cdc_pipelines.ring.slices import slice_by_id
from cdc_pipelines.rows.keys import key_identity
from cdc_pipelines.rows.layout import upsert_layout
from cdc_pipelines.scylla.key_reads import (
    SourceRange,
    count_rows,
    existing_keys,
    matched_key,
    range_matchable,
    read_source_rows,
    scan_rows,
)
from cdc_pipelines_tests.declarations import replicated
from cdc_pipelines_tests.integration.test_key_reads import LAYOUTS, T0, _case, rewrite
from cdc_pipelines_tests.integration.test_key_reads import key_tables as key_tables_fixture

key_tables = key_tables_fixture  # the same module-scoped tables

SLICES = 3  # the keys spread over several slices; each is scanned on its own


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_range_scan_answers_like_the_key_re_read(
    cql_session: Any, key_tables: dict[str, TableSpec], layout: str
) -> None:
    table = replicated(key_tables[layout], slices=SLICES)
    spec = table.spec

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=_case(layout))
    def check(case: tuple[list[tuple[object, ...]], list[tuple[object, ...]]]) -> None:
        written, asked = case
        rewrite(cql_session, spec, written)
        by_key = read_source_rows(cql_session, table, asked)
        by_scan: list[object] = [None] * len(asked)
        present: list[bool | None] = [None] * len(asked)
        for index in range(SLICES):
            ranges = slice_by_id(f"{index:02d}", SLICES).sub_ranges(4)
            scanned = SourceRange(cql_session, table, ranges).read(asked)
            keys = existing_keys(cql_session, table, ranges)
            for i, row in enumerate(scanned):
                by_scan[i] = by_scan[i] or row
                matched = matched_key(spec, asked[i])
                if matched is not None:
                    present[i] = bool(present[i]) or matched in keys
        assert by_scan == by_key  # rows, masked values and versions alike
        for i, row in enumerate(by_key):
            if present[i] is not None:
                assert present[i] == (row is not None)

    check()


def test_only_exactly_matchable_keys_are_scanned(key_tables: dict[str, TableSpec]) -> None:
    assert range_matchable(key_tables["timestamp_inet_then_uuid_varint"])
    assert not range_matchable(key_tables["decimal_then_timeuuid"])
    assert not range_matchable(key_tables["double_only"])


def test_a_key_below_the_millisecond_names_no_source_row(
    cql_session: Any, key_tables: dict[str, TableSpec]
) -> None:
    """The driver would bind ``.123456`` as ``.123`` and hand back another key's row."""
    import datetime as dt
    import uuid

    spec = key_tables["timestamp_inet_then_uuid_varint"]
    table = replicated(spec)
    exact = dt.datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    cql_session.execute(f"TRUNCATE {spec.keyspace}.{spec.table}")
    cql_session.execute(
        f"INSERT INTO {spec.keyspace}.{spec.table} (k0, k1, k2, k3, v) "
        "VALUES (%s, %s, %s, %s, 'x') USING TIMESTAMP %s",
        (exact, "10.0.0.1", uuid.UUID(int=1), 5, T0),
    )
    below = exact.replace(microsecond=123456)
    rows = read_source_rows(
        cql_session,
        table,
        [(exact, "10.0.0.1", uuid.UUID(int=1), 5), (below, "10.0.0.1", uuid.UUID(int=1), 5)],
    )
    assert rows[0] is not None and rows[1] is None


class _Counting:
    """The session, counting the range reads started but not yet taken by the scan."""

    def __init__(self, session: Any) -> None:
        self.session, self.ahead, self.most_ahead = session, 0, 0

    def prepare(self, cql: str) -> Any:
        return self.session.prepare(cql)

    def execute_async(self, statement: Any, parameters: Any) -> Any:
        self.ahead += 1
        self.most_ahead = max(self.most_ahead, self.ahead)
        future = self.session.execute_async(statement, parameters)
        counting = self

        class Taken:
            def result(self) -> Any:
                counting.ahead -= 1
                return future.result()

        return Taken()


@pytest.mark.parametrize("window", [1, 3])
def test_a_scan_starts_at_most_its_window_of_ranges_ahead_of_the_one_it_reads(
    cql_session: Any, key_tables: dict[str, TableSpec], window: int
) -> None:
    """The driver's concurrent execution would start every range as soon as any answered,
    so a large slice would wait in memory whole; the scan keeps ``window`` ahead, and reads
    the same rows in the same order whatever the window."""
    table = replicated(key_tables["single_bigint"], slices=SLICES)
    rewrite(cql_session, table.spec, [(n,) for n in range(400)])
    ranges = slice_by_id("00", SLICES).sub_ranges(32)
    counting = _Counting(cql_session)
    rows = list(scan_rows(counting, table, ranges, concurrency=window))
    assert counting.most_ahead == window  # started and not yet taken by the scan
    assert counting.ahead == 0 and rows
    assert rows == list(scan_rows(cql_session, table, ranges, concurrency=8))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_slice_scan_yields_every_row_once_in_token_order_like_the_key_re_read(
    cql_session: Any, key_tables: dict[str, TableSpec], layout: str
) -> None:
    """The scan a load verifies from: each row of the slice once, partition tokens ascending
    and inside the slice, rows and versions as the key re-read gives them; the server's
    count of the slice agrees."""
    table = replicated(key_tables[layout], slices=SLICES)
    spec = table.spec
    if not range_matchable(spec):  # e.g. 0.0 and -0.0: two keys, one Python value
        pytest.skip("a slice is loaded by one scan only when its keys can be matched exactly")
    key_positions = [upsert_layout(spec, table.version_column).index(n) for n in spec.primary_key]

    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=_case(layout))
    def check(case: tuple[list[tuple[object, ...]], list[tuple[object, ...]]]) -> None:
        written, _ = case
        rewrite(cql_session, spec, written)
        scanned = []
        for index in range(SLICES):
            token_slice = slice_by_id(f"{index:02d}", SLICES)
            rows = list(scan_rows(cql_session, table, token_slice.sub_ranges(4)))
            tokens = [token for token, _ in rows]
            assert tokens == sorted(tokens)
            assert all(token_slice.contains(token) for token in tokens)
            assert count_rows(cql_session, table, token_slice.token_range) == len(rows)
            scanned.extend(row for _, row in rows)
        keys = [tuple(row.values[p] for p in key_positions) for row in scanned]
        assert scanned == read_source_rows(cql_session, table, keys)  # rows and versions
        assert len({key_identity(k) for k in keys}) == len(keys)  # each row once
        stored = [r for r in read_source_rows(cql_session, table, written) if r is not None]
        assert len(scanned) == len(
            {key_identity(tuple(r.values[p] for p in key_positions)) for r in stored}
        )

    check()
