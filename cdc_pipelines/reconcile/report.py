"""What a reconciliation found: verdict counts, the JSON report and the Parquet file of discrepancies.

:class:`Tally` is the one place verdicts are counted by kind; the CLI's report and the
Dagster metadata both use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cdc_pipelines.postgres.repair import RepairOutcome
from cdc_pipelines.reconcile.verify import CandidateKind, VerificationResult


@dataclass(frozen=True)
class Tally:
    """Verdicts after the re-read, by kind."""

    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    in_flight: int = 0
    resolved: int = 0
    target_ahead: int = 0  # different, with the target's version ahead: reported, not repaired

    @classmethod
    def of(cls, verification: VerificationResult) -> Tally:
        kinds = [c.kind for c in verification.confirmed]
        return cls(
            missing=kinds.count(CandidateKind.MISSING),
            extra=kinds.count(CandidateKind.EXTRA),
            mismatched=kinds.count(CandidateKind.MISMATCHED),
            in_flight=len(verification.in_flight),
            resolved=len(verification.resolved),
            target_ahead=len(verification.target_ahead),
        )

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            missing=self.missing + other.missing,
            extra=self.extra + other.extra,
            mismatched=self.mismatched + other.mismatched,
            in_flight=self.in_flight + other.in_flight,
            resolved=self.resolved + other.resolved,
            target_ahead=self.target_ahead + other.target_ahead,
        )

    @property
    def confirmed(self) -> int:
        """Discrepancies repair can settle: missing, extra and mismatched rows."""
        return self.missing + self.extra + self.mismatched

    @property
    def disagreeing(self) -> int:
        """Every key still different after the re-read, target-ahead rows included."""
        return self.confirmed + self.target_ahead


@dataclass
class ReconcileReport:
    """The JSON report of one table's reconciliation."""

    table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    mismatched: int = 0
    in_flight: int = 0
    resolved: int = 0
    target_ahead: int = 0
    repaired: dict[str, int] = field(default_factory=lambda: {"upserted": 0, "deleted": 0})
    duration_s: float = 0.0
    discrepancies_path: str | None = None
    dry_run_sql_path: str | None = None
    slices: list[dict[str, object]] = field(default_factory=list)
    verification: str = "not run"
    catch_up_confirmed: bool = True  # the sink's offsets were seen past the scan's end offsets
    repair_refused: str | None = None  # why --repair changed nothing, when it refused
    repair_failed: str | None = None  # set in the partial report of a repair that stopped
    undone_after_source_delete: int = 0  # repaired rows removed again: the source deleted them
    skipped_newer: int = 0
    remaining: int = 0
    run_id: str | None = None  # names the repair script, the Parquet file and the audit rows

    @property
    def confirmed(self) -> int:
        return self.missing + self.extra + self.mismatched

    @property
    def settled(self) -> bool:
        """Clean: nothing remains, and no candidate is left unsure by an unconfirmed catch-up."""
        unsure = not self.catch_up_confirmed and (self.confirmed + self.in_flight) > 0
        return self.remaining == 0 and not unsure

    def add_verdicts(self, tally: Tally) -> None:
        self.missing += tally.missing
        self.extra += tally.extra
        self.mismatched += tally.mismatched
        self.in_flight += tally.in_flight
        self.resolved += tally.resolved
        self.target_ahead += tally.target_ahead

    def add_repair(self, outcome: RepairOutcome) -> int:
        """Count an applied repair; returns how many confirmed discrepancies it settled."""
        self.repaired["upserted"] += outcome.upserted
        self.repaired["deleted"] += outcome.deleted
        self.skipped_newer += outcome.skipped_newer
        return (
            outcome.upserted
            + outcome.deleted
            + outcome.skipped_newer
            + outcome.skipped_unchanged
            + outcome.skipped_absent
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "confirmed": self.confirmed}, indent=2, default=str)


TARGET_AHEAD = "target_ahead"
CONFIRMED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("kind", pa.string()),
        ("source_version", pa.int64()),
        ("target_version", pa.int64()),
    ]
)


_KEY_JSON = json.JSONEncoder(default=str)  # one encoder for every key: building one costs more


def key_json(key: Sequence[object]) -> str:
    """A key as the verdict file records it: a JSON array of its values."""
    if all(type(value) is int for value in key):  # the usual case, and json.dumps's spelling
        return "[" + ", ".join(map(str, key)) + "]"
    return _KEY_JSON.encode(list(key))


class ConfirmedWriter:
    """Every confirmed discrepancy (key as JSON, kind, versions) appended to one Parquet file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(path, CONFIRMED_SCHEMA)

    def __enter__(self) -> ConfirmedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()

    def write(self, verification: VerificationResult) -> None:
        confirmed = (*verification.confirmed, *verification.target_ahead)
        if not confirmed:
            return
        kinds = [c.kind.value for c in verification.confirmed]
        kinds += [TARGET_AHEAD] * len(verification.target_ahead)
        self._writer.write_table(
            pa.table(
                {
                    "key": [key_json(c.key) for c in confirmed],
                    "kind": kinds,
                    "source_version": [c.source.version if c.source else None for c in confirmed],
                    "target_version": [c.target_version for c in confirmed],
                },
                schema=CONFIRMED_SCHEMA,
            )
        )
