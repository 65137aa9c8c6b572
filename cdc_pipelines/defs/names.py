"""Every Dagster name derived from one declared table: asset keys, jobs, groups, run tags.

Names are computed in one place so sensors, jobs and assets agree, and so a table's
names never change unless its declaration does.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

import dagster as dg

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.replicated_table import ReplicatedTable, resolve_all
from cdc_pipelines.ring.slices import slice_ids

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )

AssetJob: TypeAlias = "UnresolvedAssetJobDefinition"
"""What ``dg.define_asset_job`` returns (the class itself is not exported by ``dagster``)."""

TAG_TABLE = "cdc/table"
"""Run tag naming the table (``ks.t``); dagster.yaml limits concurrent runs per value."""
TAG_REASON = "cdc/reason"
TAG_STAGE = "cdc/stage"
TAG_TRIGGER = "cdc/trigger"
TAG_INDEX_RUN = "cdc/index-run"
REASON_LAG = "lag-recovered"
REASON_DLQ = "dlq-growth"
REASON_CONNECTOR = "connector-failed"
REASON_NIGHTLY = "nightly"
STAGE_INDEX = "index"
STAGE_SLICE = "slice"
ESCALATION_JOB = "escalate_connector_failure"
ESCALATION_OP = "report_connector_failure"
SOURCE_SCAN_POOL = "scylla_scan"
"""Concurrency pool of every op that scans ScyllaDB (limit set in dagster.yaml)."""

# Dagster names allow letters, digits and underscores; asset key parts also dots and dashes.
_KEY_PART_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_HASH_CHARS = 6


def iso_utc(ms: int) -> str:
    """A millisecond timestamp as ``2026-01-02T03:04:05Z`` (for run tags and messages)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_part(name: str) -> str:
    """``name`` as an asset key part: unchanged when Dagster accepts it, else cleaned and suffixed.

    The suffix is a hash of the original, so two PostgreSQL names that clean to the
    same text (``"a b"`` and ``"a-b"`` stay apart) still get different keys.
    """
    if _KEY_PART_SAFE.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_CHARS]
    return f"{_NAME_UNSAFE.sub('_', name).strip('_') or 'x'}_{digest}"


@dataclass(frozen=True)
class TableNames:
    """The Dagster side of one replicated table."""

    table: ReplicatedTable

    @property
    def spec(self) -> TableSpec:
        return self.table.spec

    @property
    def topic(self) -> str:
        return self.table.topic

    @property
    def sink(self) -> str:
        return self.table.sink_name

    @property
    def dlq_topic(self) -> str:
        return self.table.dlq_topic

    @property
    def slice_count(self) -> int:
        return self.table.slices

    @property
    def source(self) -> str:
        """``keyspace.table``, the table's name in run tags, cursors and messages."""
        return self.spec.source

    @property
    def ident(self) -> str:
        """``keyspace__table``: unique per table (CQL names are plain) and a valid Dagster name."""
        return f"{self.spec.keyspace}__{self.spec.table}"

    @property
    def group(self) -> str:
        return self.spec.keyspace

    @property
    def consumer_group(self) -> str:
        """Kafka Connect names a sink's consumer group ``connect-<connector name>``."""
        return f"connect-{self.sink}"

    @property
    def slices(self) -> tuple[str, ...]:
        return slice_ids(self.slice_count)

    @property
    def scylla_key(self) -> dg.AssetKey:
        return dg.AssetKey(["scylla", self.spec.keyspace, self.spec.table])

    @property
    def kafka_key(self) -> dg.AssetKey:
        return dg.AssetKey(["kafka", key_part(self.topic)])

    @property
    def postgres_key(self) -> dg.AssetKey:
        return dg.AssetKey(
            ["postgres", key_part(self.spec.target_schema), key_part(self.spec.target_table)]
        )

    @property
    def target_index_key(self) -> dg.AssetKey:
        return dg.AssetKey(["target_index", self.spec.keyspace, self.spec.table])

    @property
    def reconciliation_key(self) -> dg.AssetKey:
        return dg.AssetKey(["reconciliation", self.spec.keyspace, self.spec.table])

    @property
    def repair_key(self) -> dg.AssetKey:
        return dg.AssetKey(["repair", self.spec.keyspace, self.spec.table])

    @property
    def reconcile_job(self) -> str:
        return f"reconcile__{self.ident}"

    @property
    def repair_job(self) -> str:
        return f"repair_slice__{self.ident}"

    def reconcile_request(self, reason: str, trigger: str, run_key: str) -> dg.RunRequest:
        """A run rebuilding the table's target index; its success fans out one run per slice."""
        return dg.RunRequest(
            run_key=run_key,
            job_name=self.reconcile_job,
            asset_selection=[self.target_index_key],
            tags=self.run_tags(reason, STAGE_INDEX, trigger),
        )

    def run_tags(self, reason: str, stage: str, trigger: str) -> dict[str, str]:
        """Tags of a requested run: the table (concurrency), why, which step, what triggered it."""
        return {TAG_TABLE: self.source, TAG_REASON: reason, TAG_STAGE: stage, TAG_TRIGGER: trigger}


def table_names(config: PipelineConfig) -> tuple[TableNames, ...]:
    return tuple(TableNames(table) for table in resolve_all(config))
