"""Step 3, verify: once the sink has passed the scan's offsets, re-read each candidate on both sides.

:class:`CandidateVerifier` keeps one CQL session and one PostgreSQL connection for a
table's candidates, so a whole-table run can verify (and drop) one slice after another;
the first non-empty call waits for the sink, later calls reuse that catch-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa

from cdc_pipelines.connect.secrets import with_mask_salt
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.kafka.offsets import (
    CatchUp,
    CatchUpMethod,
    sink_group,
    wait_until_caught_up,
)
from cdc_pipelines.postgres.key_reads import TargetRow, read_target_rows
from cdc_pipelines.postgres.target_index import TOKEN_COLUMN
from cdc_pipelines.reconcile.diff import diff_slice
from cdc_pipelines.reconcile.diff_step import KIND_COLUMN, in_token_range
from cdc_pipelines.reconcile.index_step import ScanMarker
from cdc_pipelines.reconcile.verify import (
    VERIFY_CHUNK,
    Candidate,
    CandidateKind,
    VerificationResult,
    verify_in_chunks,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import MIN_TOKEN, TokenRange, TokenSlice
from cdc_pipelines.ring.tokens import table_tokens
from cdc_pipelines.rows.canonical import from_python_rows
from cdc_pipelines.rows.keys import Key, driver_keys, key_identity
from cdc_pipelines.rows.layout import upsert_layout
from cdc_pipelines.scylla.consistency import datacenter_count, read_covers
from cdc_pipelines.scylla.key_reads import (
    ScannedShapes,
    SourceRange,
    SourceRow,
    existing_keys,
    key_types,
    matched_key,
    range_matchable,
    read_source_rows,
    scan_raw_rows,
)
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import ConnectionSettings

DEFAULT_SETTLE_SECONDS = 5.0
# Re-read a slice's candidates by one scan of its token range once they are this share of
# its rows. Measured (docs/benchmarks.md): re-reading keys batched by IN costs as much as
# the scan at 35-45% of a slice's rows, keys read one by one far earlier.
RESCAN_SHARE = 0.3
RESCAN_RANGES = 16  # sub-ranges of the slice scanned concurrently
WHOLE_SLICE_RANGES = 16  # sub-ranges of a slice scanned whole (memory: see SCAN_WINDOW)
# Rows of a slice diffed in its scan, diffed and verified at a time: at the drift that routes
# a slice there (``diff_step.DRIFT_SHARE``), about a chunk of candidates.
DIFF_IN_SCAN_CHUNK = 2 * VERIFY_CHUNK
DEFAULT_VERIFY_TIMEOUT_S = 120.0
NOTHING_VERIFIED = VerificationResult((), (), ())
Presence = Callable[[Sequence[Key]], list[bool]]


def _keyed(
    candidates: pa.Table, table: ReplicatedTable, tokens: Sequence[int] | None = None
) -> tuple[list[Candidate], list[int]]:
    """The candidates as driver keys with their kinds, each key once, in the table's order,
    and the ``tokens`` (one per row of ``candidates``) of those kept."""
    column = candidates.column(KIND_COLUMN)
    kind_of = {name: CandidateKind(name) for name in column.unique().to_pylist()}
    kinds = [kind_of[name] for name in column.to_pylist()]
    keys = driver_keys(candidates, table.canonical)
    seen: set[object] = set()
    kept: list[Candidate] = []
    kept_tokens: list[int] = []
    for position, (key, kind) in enumerate(zip(keys, kinds, strict=True)):
        identity = key_identity(key)
        if identity in seen:
            continue
        seen.add(identity)
        kept.append(Candidate(key, kind))
        if tokens is not None:
            kept_tokens.append(int(tokens[position]))
    return kept, kept_tokens


def _key_positions(table: ReplicatedTable) -> list[int]:
    """Where the key's values are in a source row (``upsert_layout`` order)."""
    layout = upsert_layout(table.spec, table.version_column)
    return [layout.index(name) for name in table.spec.primary_key]


def _found_in(rows: dict[object, SourceRow]) -> Callable[[Sequence[Key]], list[SourceRow | None]]:
    """A source reader that finds keys among rows already read (None: not among them)."""
    return lambda wanted: [rows.get(key_identity(k)) for k in wanted]


def _canonical_keys(rows: pa.Table, key_names: Sequence[str]) -> list[tuple[object, ...]]:
    """The canonical key of every row of ``rows``, as tuples (to match rows of one scan)."""
    return list(zip(*[rows.column(name).to_pylist() for name in key_names], strict=True))


@dataclass(frozen=True)
class CatchUpWait:
    """How long verification waits for the sink before re-reading."""

    settle_seconds: float = DEFAULT_SETTLE_SECONDS  # when Kafka cannot tell
    timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S


def postgres_connection(dsn: str) -> psycopg.Connection[Any]:
    """A connection to the target, or a ServiceError naming the fix."""
    try:
        return psycopg.connect(dsn)
    except psycopg.OperationalError as exc:
        raise ServiceError(
            f"cannot connect to PostgreSQL: {str(exc).strip()}; check CDC_POSTGRES_DSN and "
            "that the server is up"
        ) from None


def merge(parts: Sequence[VerificationResult], catch_up: CatchUp | None) -> VerificationResult:
    """Chunks' verdicts as one result."""
    if not parts:
        return NOTHING_VERIFIED
    return VerificationResult(
        tuple(c for v in parts for c in v.confirmed),
        tuple(k for v in parts for k in v.resolved),
        tuple(k for v in parts for k in v.in_flight),
        catch_up,
        tuple(c for v in parts for c in v.target_ahead),
    )


class CandidateVerifier:
    """Verifies candidate tables one after another on one CQL session and one connection."""

    def __init__(
        self,
        table: ReplicatedTable,
        settings: ConnectionSettings,
        scan: ScanMarker,
        wait: CatchUpWait = CatchUpWait(),
        catch_up: CatchUp | None = None,
    ) -> None:
        """``catch_up``: the sink's catch-up when another verifier of the same scan already
        established it (slice workers), so it is not waited for again."""
        self.table, self.settings = with_mask_salt(table), settings
        self.scan, self.wait = scan, wait
        self.catch_up: CatchUp | None = catch_up
        self._stack = ExitStack()
        self._session: Any = None
        self._conn: psycopg.Connection[Any] | None = None
        self.span: TokenRange | None = None  # the token span of the chunk being verified
        self.scanned = self.scanned_in_index = 0  # by verify_whole_slice and verify_diff_in_scan
        self.extra_in_scan = self.mismatched_in_scan = 0  # by verify_diff_in_scan

    def __enter__(self) -> CandidateVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _wait_for_sink(self) -> CatchUp:
        if self.scan.end_offsets is None:
            # Without the scan's end offsets there is nothing to wait for: a broker that is
            # back by now would report "caught up" on no targets. Settle, unconfirmed.
            time.sleep(self.wait.settle_seconds)
            return CatchUp(
                caught_up=True,
                method=CatchUpMethod.SETTLE_WINDOW,
                waited_s=self.wait.settle_seconds,
                detail=(
                    f"the topic's end offsets were unknown when the scan started "
                    f"({self.scan.kafka_error}); verification waited the settle window of "
                    f"{self.wait.settle_seconds:g} s instead"
                ),
            )
        return wait_until_caught_up(
            self.settings.kafka_bootstrap_servers,
            sink_group(self.table.sink_name),
            self.table.topic,
            self.scan.end_offsets,
            self.wait.timeout_s,
            settle_window_s=self.wait.settle_seconds,
        )

    @property
    def confirmed(self) -> bool:
        """Whether the sink was shown to have caught up (vacuously, when nothing was verified)."""
        return self.catch_up is None or (
            self.catch_up.caught_up and self.catch_up.method is CatchUpMethod.OFFSETS
        )

    @property
    def detail(self) -> str:
        """How the sink's catch-up was established, for reports ("no candidates" if not needed)."""
        return self.catch_up.detail if self.catch_up is not None else "no candidates"

    def verify(self, candidates: Sequence[pa.Table]) -> VerificationResult:
        """Every verdict on ``candidates`` at once (see :meth:`verify_in_chunks`)."""
        return merge([v for part in candidates for v in self.verify_in_chunks(part)], self.catch_up)

    def verify_in_chunks(
        self, candidates: pa.Table, token_slice: TokenSlice | None = None, slice_rows: int = 0
    ) -> Iterator[VerificationResult]:
        """Verdicts on one slice's candidates, a chunk of keys at a time.

        When the candidates are at least :data:`RESCAN_SHARE` of the slice's ``slice_rows``
        and its keys can be matched exactly, the candidates are taken in token order and the
        source side of each chunk is read by one scan of the tokens the chunk spans, instead
        of key by key: the chunks' scans add up to one scan of the slice, and memory follows
        the chunk. The versions the scan returns decide, as a key re-read's would. Each
        chunk's span is in :attr:`span` while its verdicts are used.
        """
        table = self.table
        self.span = None
        if not candidates.num_rows:
            return
        self.wait_for_sink()
        rescan = (
            token_slice is not None
            and candidates.num_rows >= RESCAN_SHARE * slice_rows
            and range_matchable(table.spec)
        )
        if not rescan:
            yield from self._verify(_keyed(candidates, table)[0], self.read_source)
            return
        tokens = table_tokens(candidates, table.canonical).to_numpy()
        order = np.argsort(tokens, kind="stable")
        keyed, keyed_tokens = _keyed(candidates.take(pa.array(order)), table, tokens[order])
        for start in range(0, len(keyed), VERIFY_CHUNK):
            chunk_tokens = keyed_tokens[start : start + VERIFY_CHUNK]
            low, high = chunk_tokens[0], chunk_tokens[-1]
            # (low - 1, high] holds every token of the chunk (MIN_TOKEN is no key's token).
            span = TokenRange(max(MIN_TOKEN, low - 1), high)
            scanned = SourceRange(self._cql(), table, span.split(RESCAN_RANGES))
            self.span = span
            yield from self._verify(keyed[start : start + VERIFY_CHUNK], scanned.read)
        self.span = None

    def verify_whole_slice(
        self, token_slice: TokenSlice, index_keys: Sequence[Key] = ()
    ) -> Iterator[VerificationResult]:
        """Verdicts on every source row of a slice to load: one whose target index held few
        of its rows (``index_keys``, see ``diff_step.route_slice``), so no diff ran.

        Once the sink has caught up, the slice is scanned in token order and cut into chunks
        of about :data:`VERIFY_CHUNK` rows at partition boundaries; each chunk's rows are
        its source re-read (their versions decide, as a re-scan's do) and its keys are
        re-read from the target, so memory follows the chunk. The keys of ``index_keys``
        found equal are left out of the verdicts (the diff would not have flagged them);
        those the scan did not find are verified last, key by key, as extra candidates.
        The chunk's span is in :attr:`span` while its verdicts are used; the rows scanned
        and the index keys among them are in :attr:`scanned` and :attr:`scanned_in_index`.
        """
        table = self.table
        self.span, self.scanned, self.scanned_in_index = None, 0, 0
        self.wait_for_sink()
        types = key_types(table.spec)
        indexed: dict[object, Key] = {}
        unmatched: list[Key] = []  # verified by key at the end, like the keys not scanned
        for key in index_keys:
            match = matched_key(table.spec, key, types)
            if match is None:
                unmatched.append(key)
            else:
                indexed[match] = key
        key_positions = _key_positions(table)

        def verify(batch: list[tuple[int, SourceRow]]) -> Iterator[VerificationResult]:
            keys = [tuple([r.values[p] for p in key_positions]) for _, r in batch]
            rows = {key_identity(k): r for k, (_, r) in zip(keys, batch, strict=True)}
            known: set[object] = set()
            if indexed:  # keys the target index held: agreeing ones are no discrepancy
                for key in keys:
                    match = matched_key(table.spec, key, types)
                    if match is not None and indexed.pop(match, None) is not None:
                        known.add(key_identity(key))
            self.scanned += len(keys)
            self.scanned_in_index += len(known)
            for result in verify_in_chunks(
                table,
                [Candidate(k, CandidateKind.MISSING) for k in keys],
                cutoff_us=self.scan.cutoff_us,
                read_source=lambda wanted: [rows.get(key_identity(k)) for k in wanted],
                read_target=self.read_target,
                catch_up=self.catch_up,
                chunk_size=max(1, len(keys)),
                confirm_absent=self.confirm_absent,
                recheck=self.read_source,
            ):
                agreed = [k for k in result.resolved if key_identity(k) in known]
                yield (
                    replace(
                        result,
                        resolved=tuple(k for k in result.resolved if key_identity(k) not in known),
                    )
                    if agreed
                    else result
                )

        shapes = ScannedShapes(table)
        for span, raw in self._scanned_chunks(token_slice, VERIFY_CHUNK):
            self.span = span
            if raw:
                yield from verify([(token, shapes.source_row(values)) for token, values in raw])
        self.span = None
        left = [*indexed.values(), *unmatched]
        if left:  # in the target index, not found by the scan: extra, or gone since
            extra = [Candidate(key, CandidateKind.EXTRA) for key in left]
            yield from self._verify(extra, self.read_source)

    def verify_diff_in_scan(
        self, token_slice: TokenSlice, index: pa.Table
    ) -> Iterator[VerificationResult]:
        """Verdicts on a slice with much drift (``diff_step.SliceRoute.DIFF_IN_SCAN``): its
        target ``index`` (read with tokens) holds most of its rows, many of them different.

        Once the sink has caught up, the slice is scanned in token order and cut into chunks
        as :meth:`verify_whole_slice` cuts it. Each chunk is diffed against the index rows of
        its span, as the diff step diffs a slice, and only the chunk's candidates are
        verified: the scanned rows are their source re-read (their versions decide, as a
        re-scan's do), their keys are re-read from the target, and a key only the index has
        is re-read from the source at the delete consistency. One scan does the work of the
        diff's and the re-scan's. The hash diff's counts are in :attr:`scanned`,
        :attr:`scanned_in_index`, :attr:`extra_in_scan` and :attr:`mismatched_in_scan`.
        The slice's ``index`` is held while it is scanned, as a diff holds it.
        """
        table = self.table
        self.span, self.scanned, self.scanned_in_index = None, 0, 0
        self.extra_in_scan = self.mismatched_in_scan = 0
        self.wait_for_sink()
        schema = table.canonical
        key_names = [c.name for c in schema.key_columns]
        key_positions = _key_positions(table)
        shapes = ScannedShapes(table)
        for span, raw in self._scanned_chunks(token_slice, DIFF_IN_SCAN_CHUNK):
            self.span = span
            scanned = pa.Table.from_batches(
                [from_python_rows([shapes.canonical_values(v) for _, v in raw], schema)]
            )
            in_span = in_token_range(index, span).drop_columns([TOKEN_COLUMN])
            found = diff_slice(scanned, in_span, schema, table.tolerances)
            self.scanned += len(raw)
            self.scanned_in_index += len(raw) - found.missing_count
            self.extra_in_scan += found.extra_count
            self.mismatched_in_scan += found.mismatched_count
            if not found.missing_count + found.extra_count + found.mismatched_count:
                continue
            position = {key: i for i, key in enumerate(_canonical_keys(scanned, key_names))}
            candidates: list[Candidate] = []
            by_key: dict[object, SourceRow] = {}
            for part, kind in (
                (found.missing, CandidateKind.MISSING),
                (found.mismatched, CandidateKind.MISMATCHED),
            ):
                for canonical_key in _canonical_keys(part, key_names):
                    row = shapes.source_row(raw[position[canonical_key]][1])
                    key = tuple([row.values[p] for p in key_positions])
                    by_key[key_identity(key)] = row
                    candidates.append(Candidate(key, kind))
            extra = driver_keys(found.extra.select(key_names), schema)
            candidates.extend(Candidate(key, CandidateKind.EXTRA) for key in extra)
            yield from verify_in_chunks(
                table,
                candidates,
                cutoff_us=self.scan.cutoff_us,
                read_source=_found_in(by_key),
                read_target=self.read_target,
                catch_up=self.catch_up,
                confirm_absent=self.confirm_absent,
                recheck=self.read_source,
            )
        self.span = None

    def _scanned_chunks(
        self, token_slice: TokenSlice, rows: int
    ) -> Iterator[tuple[TokenRange, list[tuple[int, Sequence[object]]]]]:
        """The slice's rows (as :func:`scan_raw_rows` gives them) with their tokens, in token
        order, cut at partition boundaries into chunks of about ``rows`` rows, each with the
        token span it covers: the spans tile the slice, the last one ending at its end (its
        chunk may be empty)."""
        start, batch = token_slice.start, list[tuple[int, Sequence[object]]]()
        ranges = token_slice.sub_ranges(WHOLE_SLICE_RANGES)
        for token, row in scan_raw_rows(self._cql(), self.table, ranges):
            if len(batch) >= rows and token != batch[-1][0]:
                end = batch[-1][0]
                yield TokenRange(start, end), batch
                start, batch = end, []
            batch.append((token, row))
        yield TokenRange(start, token_slice.end), batch

    def _verify(
        self, keyed: list[Candidate], read_source: Callable[[Sequence[Key]], list[SourceRow | None]]
    ) -> Iterator[VerificationResult]:
        yield from verify_in_chunks(
            self.table,
            keyed,
            cutoff_us=self.scan.cutoff_us,
            read_source=read_source,
            read_target=self.read_target,
            catch_up=self.catch_up,
            confirm_absent=self.confirm_absent,
            recheck=self.read_source,
        )

    def confirm_absent(self, keys: Sequence[Key]) -> list[SourceRow | None]:
        """The source rows of ``keys`` read at the delete consistency (``scylla.delete_consistency``)."""
        return read_source_rows(
            self._cql(), self.table, keys, consistency=self.table.scylla.delete_consistency
        )

    def source_presence(
        self, token_slice: TokenSlice | None = None, slice_rows: int = 0
    ) -> Presence:
        """Tells which keys the source still has: key by key, or, for a large share of the
        slice's rows, by one scan of the slice's key columns (same rule as the re-read)."""
        table = self.table
        # A key found gone is deleted again from the target: ask at the delete consistency.
        level = table.scylla.delete_consistency

        def by_key(keys: Sequence[Key]) -> list[bool]:
            rows = read_source_rows(self._cql(), table, keys, consistency=level)
            return [row is not None for row in rows]

        def by_scan(keys: Sequence[Key]) -> list[bool]:
            if len(keys) < RESCAN_SHARE * slice_rows or token_slice is None:
                return by_key(keys)
            ranges = token_slice.sub_ranges(RESCAN_RANGES)
            present = existing_keys(self._cql(), table, ranges, consistency=level)
            types = key_types(table.spec)
            matched = [matched_key(table.spec, k, types) for k in keys]
            unmatched = [k for k, m in zip(keys, matched, strict=True) if m is None]
            again = iter(by_key(unmatched)) if unmatched else iter(())
            return [next(again) if m is None else m in present for m in matched]

        return by_scan if range_matchable(table.spec) else by_key

    def presence_in(self, span: TokenRange) -> Presence:
        """Tells which keys (all within ``span``) the source still has, by one scan of the
        span's key columns at the delete consistency; keys a scan cannot match, by key."""
        table = self.table
        level = table.scylla.delete_consistency

        def by_span(keys: Sequence[Key]) -> list[bool]:
            present = existing_keys(
                self._cql(), table, span.split(RESCAN_RANGES), consistency=level
            )
            types = key_types(table.spec)
            matched = [matched_key(table.spec, k, types) for k in keys]
            unmatched = [k for k, m in zip(keys, matched, strict=True) if m is None]
            rows = read_source_rows(self._cql(), table, unmatched, consistency=level)
            again = iter(row is not None for row in rows)
            return [next(again) if m is None else m in present for m in matched]

        return by_span

    def wait_for_sink(self) -> CatchUp:
        """Wait (once) until the sink has caught up with the scan, or say why it cannot tell."""
        if self.catch_up is None:
            self.catch_up = self._wait_for_sink()
        return self.catch_up

    def connect_source(self) -> None:
        """Open the CQL session now: before threads share it (it is thread-safe once open)."""
        self._cql()

    def reads_confirm_deletes(self) -> bool:
        """Whether the source reads (at ``scylla.consistency``) are as sure that a row is gone
        as the delete consistency's re-read would be (connects to the source to tell)."""
        scylla = self.table.scylla
        return read_covers(
            scylla.consistency, scylla.delete_consistency, datacenter_count(self._cql())
        )

    def _cql(self) -> Any:
        if self._session is None:
            self._session = self._stack.enter_context(cql_session(self.settings, self.table.scylla))
        return self._session

    def read_source(self, keys: Sequence[Key]) -> list[SourceRow | None]:
        """The source rows of ``keys`` now (None: absent), on the verifier's session."""
        return read_source_rows(self._cql(), self.table, keys)

    def target_connection(self) -> psycopg.Connection[Any]:
        """The verifier's connection to the target (opened on first use)."""
        if self._conn is None:
            self._conn = self._stack.enter_context(postgres_connection(self.settings.postgres_dsn))
        return self._conn

    def read_target(self, keys: Sequence[Key]) -> list[TargetRow | None]:
        """The target rows of ``keys`` now (None: absent), on the verifier's connection."""
        return read_target_rows(self.target_connection(), self.table, keys)
