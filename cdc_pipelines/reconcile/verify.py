"""Lag-aware verification: re-read every discrepancy on both sides and keep only the real ones.

After the sink has caught up (:func:`cdc_pipelines.kafka.offsets.wait_until_caught_up`), each
candidate key is re-read from the source (CQL, by primary key, with ``WRITETIME``; see
:mod:`cdc_pipelines.scylla.key_reads`) and the
target (PostgreSQL, by primary key) and reclassified:

- equal, or gone from both → resolved;
- the source row written after the scan's cut-off, or the target row newer than the cut-off
  while the source no longer has the key (a delete may still be on its way) → in flight;
- different while the target row's version is ahead of the source row's → target ahead: no
  change of the source explains it, repair's version guard will not overwrite it, and it is
  reported on its own (a hand edit, another writer, or a sink writing a different version);
- otherwise still different → confirmed (missing, extra or mismatched), for repair.

Keys are tuples of primary-key values in ``TableSpec.primary_key`` order, as cassandra-driver
takes and returns them (``uuid.UUID``, ``Decimal``, aware ``datetime``, ``str`` …).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.kafka.offsets import CatchUp, CatchUpMethod
from cdc_pipelines.postgres.key_reads import TargetRow, canonical_rows
from cdc_pipelines.postgres.repair import ExtraRow
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.rows.canonical import from_python_rows
from cdc_pipelines.rows.compare import differing_columns
from cdc_pipelines.rows.keys import Key, key_identity
from cdc_pipelines.rows.layout import upsert_layout
from cdc_pipelines.scylla.key_reads import SourceRow

VERIFY_CHUNK = 20_000  # keys re-read at a time: bounds memory at any drift


class CandidateKind(StrEnum):
    MISSING = "missing"  # in the source, not in the target
    EXTRA = "extra"  # in the target, not in the source
    MISMATCHED = "mismatched"  # in both, with different values


class Candidate(NamedTuple):  # a tuple: built for every row of a slice to load
    """A key the diff flagged, and how."""

    key: Key
    kind: CandidateKind


class ConfirmedDiscrepancy(NamedTuple):  # a tuple: built for every row of a slice to load
    """A discrepancy that survived the re-read; ``kind`` is what it is now."""

    key: Key
    kind: CandidateKind
    source: SourceRow | None
    target_version: int | None


@dataclass(frozen=True)
class VerificationResult:
    """Candidates reclassified after the re-read."""

    confirmed: tuple[ConfirmedDiscrepancy, ...]
    resolved: tuple[Key, ...]
    in_flight: tuple[Key, ...]
    catch_up: CatchUp | None = None
    target_ahead: tuple[ConfirmedDiscrepancy, ...] = ()

    @property
    def catch_up_confirmed(self) -> bool:
        """Whether the sink was shown (by its committed offsets) to have applied every change
        the scan could see; without that, the verdicts may count rows still in flight."""
        return self.catch_up is None or (
            self.catch_up.caught_up and self.catch_up.method is CatchUpMethod.OFFSETS
        )

    @property
    def confirmed_keys(self) -> tuple[Key, ...]:
        return tuple(c.key for c in self.confirmed)

    @property
    def insert_rows(self) -> tuple[tuple[object, ...], ...]:
        """Fresh source rows of the confirmed missing keys, absent from the target when re-read
        (plan_repair's ``inserts``)."""
        return tuple(
            c.source.values
            for c in self.confirmed
            if c.source is not None and c.kind is CandidateKind.MISSING
        )

    @property
    def upsert_rows(self) -> tuple[tuple[object, ...], ...]:
        """Fresh source rows of the confirmed mismatched keys (plan_repair's ``upserts``)."""
        return tuple(
            c.source.values
            for c in self.confirmed
            if c.source is not None and c.kind is not CandidateKind.MISSING
        )

    @property
    def delete_rows(self) -> tuple[ExtraRow, ...]:
        """Confirmed extras with the target version seen now (for plan_repair)."""
        return tuple(
            ExtraRow(c.key, c.target_version)
            for c in self.confirmed
            if c.kind is CandidateKind.EXTRA
        )


SourceReader = Callable[[Sequence[Key]], Sequence[SourceRow | None]]
TargetReader = Callable[[Sequence[Key]], Sequence[TargetRow | None]]


# --------------------------------------------------------------------------- verification


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[object, Candidate] = {}
    for candidate in candidates:
        seen.setdefault(key_identity(candidate.key), candidate)
    return list(seen.values())


def canonical_source_rows(rows: Sequence[SourceRow], replicated: ReplicatedTable) -> pa.Table:
    """Source rows (as re-read) as one canonical table, in order: what the diff compares."""
    schema = replicated.canonical
    layout = upsert_layout(replicated.spec, replicated.version_column)
    picks = [layout.index(name) for name in schema.column_names]
    return pa.Table.from_batches(
        [from_python_rows([tuple([row.values[i] for i in picks]) for row in rows], schema)]
    )


def _differs(
    pairs: Sequence[tuple[SourceRow, TargetRow]], replicated: ReplicatedTable
) -> list[bool]:
    """Whether each (source, target) pair differs in a compared column beyond tolerance."""
    if not pairs:
        return []
    schema = replicated.canonical
    source = canonical_source_rows([s for s, _ in pairs], replicated)
    target = canonical_rows([t for _, t in pairs])
    mask = differing_columns(source, target, schema.compared_columns, replicated.tolerances)
    differs: list[bool] = np.any(mask, axis=1).tolist()
    return differs


def verify_in_chunks(
    replicated: ReplicatedTable,
    candidates: Iterable[Candidate],
    *,
    cutoff_us: int,
    read_source: SourceReader,
    read_target: TargetReader,
    catch_up: CatchUp | None = None,
    chunk_size: int | None = None,
    confirm_absent: SourceReader | None = None,
    recheck: SourceReader | None = None,
) -> Iterator[VerificationResult]:
    """Reclassify the diff's candidates from a fresh read of both sides, ``chunk_size`` keys
    (default :data:`VERIFY_CHUNK`) at a time, so memory follows the chunk, not the drift.

    ``cutoff_us`` is the scan's cut-off (µs since the epoch): a source row written later was
    written after the scan and is in flight, not a discrepancy.
    ``read_source``/``read_target`` re-read a list of keys (see
    :func:`cdc_pipelines.scylla.key_reads.read_source_rows` and
    :func:`cdc_pipelines.postgres.key_reads.read_target_rows`; bind them with
    ``functools.partial``). Pass the ``catch_up`` result to keep it with the verdicts.
    ``confirm_absent`` re-reads the keys the source lacks while the target has them, at the
    delete consistency, before they are confirmed extra (a delete must not trust a replica
    that missed a write). ``recheck`` re-reads, key by key and after the target's re-read,
    the source of keys whose target version is ahead: a write the sink applied between the
    two reads is then in flight, not target-ahead.
    """
    size = chunk_size or VERIFY_CHUNK
    unique = _unique(candidates)
    for start in range(0, len(unique), size):
        verdicts = _Verdicts()
        _verify_chunk(
            replicated,
            [c.key for c in unique[start : start + size]],
            verdicts,
            cutoff_us=cutoff_us,
            read_source=read_source,
            read_target=read_target,
            confirm_absent=confirm_absent,
            recheck=recheck,
        )
        yield verdicts.result(catch_up)


def verify_discrepancies(
    replicated: ReplicatedTable,
    candidates: Iterable[Candidate],
    *,
    cutoff_us: int,
    read_source: SourceReader,
    read_target: TargetReader,
    catch_up: CatchUp | None = None,
    confirm_absent: SourceReader | None = None,
    recheck: SourceReader | None = None,
) -> VerificationResult:
    """Every verdict of :func:`verify_in_chunks` in one result."""
    merged = _Verdicts()
    for part in verify_in_chunks(
        replicated,
        candidates,
        cutoff_us=cutoff_us,
        read_source=read_source,
        read_target=read_target,
        catch_up=catch_up,
        confirm_absent=confirm_absent,
        recheck=recheck,
    ):
        merged.confirmed.extend(part.confirmed)
        merged.resolved.extend(part.resolved)
        merged.in_flight.extend(part.in_flight)
        merged.target_ahead.extend(part.target_ahead)
    return merged.result(catch_up)


def _ahead(source: SourceRow | None, target: TargetRow | None) -> bool:
    return (
        source is not None
        and target is not None
        and target.version is not None
        and target.version > source.version
    )


@dataclass
class _Verdicts:
    confirmed: list[ConfirmedDiscrepancy] = field(default_factory=list)
    resolved: list[Key] = field(default_factory=list)
    in_flight: list[Key] = field(default_factory=list)
    target_ahead: list[ConfirmedDiscrepancy] = field(default_factory=list)

    def result(self, catch_up: CatchUp | None) -> VerificationResult:
        return VerificationResult(
            tuple(self.confirmed),
            tuple(self.resolved),
            tuple(self.in_flight),
            catch_up,
            tuple(self.target_ahead),
        )


def _verify_chunk(
    replicated: ReplicatedTable,
    keys: list[Key],
    verdicts: _Verdicts,
    *,
    cutoff_us: int,
    read_source: SourceReader,
    read_target: TargetReader,
    confirm_absent: SourceReader | None = None,
    recheck: SourceReader | None = None,
) -> None:
    """Re-read one chunk of keys on both sides; memory stays bounded by the chunk."""
    sources = list(read_source(keys))
    targets = list(read_target(keys))
    if len(sources) != len(keys) or len(targets) != len(keys):
        raise ReconcileError(
            f"table {replicated.source}: a reader returned {len(sources)}/{len(targets)} rows for "
            f"{len(keys)} keys; readers must return one entry (or None) per key"
        )
    extra = [i for i, (s, t) in enumerate(zip(sources, targets, strict=True)) if s is None and t]
    if confirm_absent is not None and extra:
        confirmed = confirm_absent([keys[i] for i in extra])
        for i, row in zip(extra, confirmed, strict=True):
            sources[i] = row
    both = [
        i
        for i, (s, t) in enumerate(zip(sources, targets, strict=True))
        if s is not None and t is not None
    ]
    differs = dict(
        zip(
            both,
            _differs([(sources[i], targets[i]) for i in both], replicated),  # type: ignore[misc]
            strict=True,
        )
    )
    ahead = [i for i in both if differs[i] and _ahead(sources[i], targets[i])]
    if recheck is not None and ahead:
        for i, row in zip(ahead, recheck([keys[i] for i in ahead]), strict=True):
            sources[i] = row
        again = [i for i in ahead if sources[i] is not None]
        fresh = _differs([(sources[i], targets[i]) for i in again], replicated)  # type: ignore[misc]
        differs.update(zip(again, fresh, strict=True))
    for i, key in enumerate(keys):
        source, target = sources[i], targets[i]
        target_version = target.version if target is not None else None
        if source is not None and source.version > cutoff_us:
            verdicts.in_flight.append(key)
        elif source is None and target is None:
            verdicts.resolved.append(key)
        elif source is None:
            if target_version is not None and target_version > cutoff_us:
                verdicts.in_flight.append(key)
            else:
                verdicts.confirmed.append(
                    ConfirmedDiscrepancy(key, CandidateKind.EXTRA, None, target_version)
                )
        elif target is None:
            verdicts.confirmed.append(
                ConfirmedDiscrepancy(key, CandidateKind.MISSING, source, None)
            )
        elif not differs[i]:
            verdicts.resolved.append(key)
        elif target_version is not None and target_version > source.version:
            verdicts.target_ahead.append(
                ConfirmedDiscrepancy(key, CandidateKind.MISMATCHED, source, target_version)
            )
        else:
            verdicts.confirmed.append(
                ConfirmedDiscrepancy(key, CandidateKind.MISMATCHED, source, target_version)
            )
