"""Step 3, verify: once the sink has passed the scan's offsets, re-read each candidate on both sides.

:class:`CandidateVerifier` keeps one CQL session and one PostgreSQL connection for a
table's candidates, so a whole-table run can verify (and drop) one slice after another;
the first non-empty call waits for the sink, later calls reuse that catch-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa

from cdc_pipelines.connect.secrets import with_mask_salt
from cdc_pipelines.kafka.offsets import (
    CatchUp,
    CatchUpMethod,
    sink_group,
    wait_until_caught_up,
)
from cdc_pipelines.postgres.key_reads import TargetRow, read_target_rows
from cdc_pipelines.reconcile.diff_step import KIND_COLUMN
from cdc_pipelines.reconcile.index_step import ScanMarker
from cdc_pipelines.reconcile.scratch import ScratchLayout, read_candidates
from cdc_pipelines.reconcile.verify import (
    Candidate,
    CandidateKind,
    VerificationResult,
    verify_discrepancies,
)
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.rows.keys import Key, driver_keys
from cdc_pipelines.scylla.key_reads import SourceRow, read_source_rows
from cdc_pipelines.scylla.session import cql_session
from cdc_pipelines.settings import ConnectionSettings

DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_VERIFY_TIMEOUT_S = 120.0
NOTHING_VERIFIED = VerificationResult((), (), ())


@dataclass(frozen=True)
class CatchUpWait:
    """How long verification waits for the sink before re-reading."""

    settle_seconds: float = DEFAULT_SETTLE_SECONDS  # when Kafka cannot tell
    timeout_s: float = DEFAULT_VERIFY_TIMEOUT_S


class CandidateVerifier:
    """Verifies candidate tables one after another on one CQL session and one connection."""

    def __init__(
        self,
        table: ReplicatedTable,
        settings: ConnectionSettings,
        scan: ScanMarker,
        wait: CatchUpWait = CatchUpWait(),
    ) -> None:
        self.table, self.settings = with_mask_salt(table), settings
        self.scan, self.wait = scan, wait
        self.catch_up: CatchUp | None = None
        self._stack = ExitStack()
        self._session: Any = None
        self._conn: psycopg.Connection[Any] | None = None

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
        table = self.table
        keyed: list[Candidate] = []
        for part in candidates:
            kinds = part.column(KIND_COLUMN).to_pylist()
            for key, kind in zip(driver_keys(part, table.canonical), kinds, strict=True):
                keyed.append(Candidate(key, CandidateKind(kind)))
        if not keyed:
            return NOTHING_VERIFIED
        if self.catch_up is None:
            self.catch_up = self._wait_for_sink()
        return verify_discrepancies(
            table,
            keyed,
            cutoff_us=self.scan.cutoff_us,
            read_source=self.read_source,
            read_target=self.read_target,
            catch_up=self.catch_up,
        )

    def read_source(self, keys: Sequence[Key]) -> list[SourceRow | None]:
        """The source rows of ``keys`` now (None: absent), on the verifier's session."""
        if self._session is None:
            self._session = self._stack.enter_context(cql_session(self.settings, self.table.scylla))
        return read_source_rows(self._session, self.table, keys)

    def read_target(self, keys: Sequence[Key]) -> list[TargetRow | None]:
        """The target rows of ``keys`` now (None: absent), on the verifier's connection."""
        if self._conn is None:
            self._conn = self._stack.enter_context(psycopg.connect(self.settings.postgres_dsn))
        return read_target_rows(self._conn, self.table, keys)


def verify_slice(
    table: ReplicatedTable,
    slice_id: str,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    wait: CatchUpWait = CatchUpWait(),
) -> VerificationResult:
    """Re-read the slice's candidates on both sides once the sink passed the scan's offsets."""
    candidates = read_candidates(layout.candidates(slice_id))
    with CandidateVerifier(table, settings, ScanMarker.read(layout), wait) as verifier:
        return verifier.verify([candidates])
