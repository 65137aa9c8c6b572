"""Step 1, index: one pass over the target table into per-slice files, after the scan marker.

The scan marker (cut-off time and the topic's end offsets) is recorded first: verification
later waits for the sink to pass those offsets and treats rows written after the cut-off as
in flight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.kafka.offsets import end_offsets
from cdc_pipelines.postgres.target_index import TargetIndexManifest, build_target_index
from cdc_pipelines.reconcile.scratch import ScratchLayout, owner_only
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.settings import ConnectionSettings


@dataclass(frozen=True)
class ScanMarker:
    """When a scan started and how far the table's topic had been written then."""

    cutoff_us: int
    end_offsets: dict[int, int] | None
    kafka_error: str | None = None

    @classmethod
    def now(cls, table: ReplicatedTable, settings: ConnectionSettings) -> ScanMarker:
        cutoff_us = time.time_ns() // 1000
        try:
            offsets = end_offsets(settings.kafka_bootstrap_servers, table.topic)
        except ServiceError as exc:
            return cls(cutoff_us, None, str(exc))
        return cls(cutoff_us, offsets)

    def write(self, layout: ScratchLayout) -> None:
        layout.scan_marker.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, layout: ScratchLayout) -> ScanMarker:
        try:
            document = json.loads(layout.scan_marker.read_text())
        except FileNotFoundError:
            raise ReconcileError(
                f"no scan marker in {layout.table_dir}; build the target index first"
            ) from None
        offsets = document.get("end_offsets")
        return cls(
            cutoff_us=int(document["cutoff_us"]),
            end_offsets={int(k): int(v) for k, v in offsets.items()} if offsets else None,
            kafka_error=document.get("kafka_error"),
        )


@owner_only
def build_index(
    table: ReplicatedTable,
    settings: ConnectionSettings,
    layout: ScratchLayout,
    on_rows: Callable[[int], None] | None = None,
) -> TargetIndexManifest:
    """Record the scan marker, then write the table's target index (see ``postgres.target_index``)."""
    layout.prepare()
    ScanMarker.now(table, settings).write(layout)
    return build_target_index(settings.postgres_dsn, table, layout.index_dir, on_rows=on_rows)
