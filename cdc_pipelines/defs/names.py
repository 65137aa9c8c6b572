"""Every Dagster name derived from one declared table: asset keys, jobs, groups, partitions, tags.

Names are computed in one place so sensors, jobs and assets agree, and so a table's
names never change unless its declaration does.

Asset keys are ``<keyspace>/<table>/<system>_<name>`` (``demo/orders/scylla_orders`` …
``demo/orders/repair_orders``): the UI labels a node by the last part of its key, so each
node reads as what it is, and the keyspace and table in front keep keys unique when two
keyspaces hold tables of the same name. One table's six assets form one group.

The reconciliation and repair assets have one partition per token slice, keyed by the
slice id and its token range (``03: -2305843009213693952 < token <= 0`` of 8 slices); the library keeps
its plain slice ids (``03``) and :meth:`TableNames.slice_id` maps a key back to one.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeAlias

import dagster as dg

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.errors import ReconcileError
from cdc_pipelines.replicated_table import ReplicatedTable, resolve_all
from cdc_pipelines.ring.slices import slice_by_id, slice_ids

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
REASON_HEALTH = "replication-health"
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
PARTITION_ID_SEPARATOR = ": "
"""Between the slice id and the token range in a partition key."""

# What each asset stands for: the first word of its node label.
SYSTEM_SCYLLA = "scylla"
SYSTEM_KAFKA = "kafka"
SYSTEM_POSTGRES = "postgres"
SYSTEM_TARGET_INDEX = "target_index"
SYSTEM_RECONCILIATION = "reconciliation"
SYSTEM_REPAIR = "repair"


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
        """One group per table (``keyspace__table``): its lineage graph is the table's chain."""
        return self.ident

    @property
    def consumer_group(self) -> str:
        """Kafka Connect names a sink's consumer group ``connect-<connector name>``."""
        return f"connect-{self.sink}"

    @property
    def slice_ids(self) -> tuple[str, ...]:
        """The library's slice ids in ring order (``00``…), as the reconciliation steps take them."""
        return slice_ids(self.slice_count)

    @property
    def slices(self) -> tuple[str, ...]:
        """The partition keys of the reconciliation and repair assets, one per slice in ring order."""
        return tuple(self.partition_key(s) for s in self.slice_ids)

    def partition_key(self, slice_id: str) -> str:
        """Slice ``slice_id``'s partition key: the id, then the tokens it covers.

        ``03: -2305843009213693952 < token <= 0`` (of 8) reads as the CQL scan of the slice
        (``token(pk) > start AND token(pk) <= end``); the key changes with the slice count,
        so a partition never names a range it did not cover.
        """
        token_slice = slice_by_id(slice_id, self.slice_count)
        return (
            f"{token_slice.id}{PARTITION_ID_SEPARATOR}"
            f"{token_slice.start} < token <= {token_slice.end}"
        )

    def slice_id(self, partition_key: str) -> str:
        """The library's slice id of a partition key of this table (ReconcileError if none)."""
        candidate = partition_key.split(PARTITION_ID_SEPARATOR, 1)[0]
        try:
            if self.partition_key(candidate) == partition_key:
                return candidate
        except ReconcileError:
            pass
        raise ReconcileError(
            f"{partition_key!r} is not a partition of {self.source}'s {self.slice_count} token "
            f"slices; expected e.g. {self.slices[0]!r}"
        )

    def _key(self, system: str, name: str) -> dg.AssetKey:
        return dg.AssetKey(
            [key_part(self.spec.keyspace), key_part(self.spec.table), key_part(f"{system}_{name}")]
        )

    @property
    def scylla_key(self) -> dg.AssetKey:
        """``ks/t/scylla_t``: the source table."""
        return self._key(SYSTEM_SCYLLA, self.spec.table)

    @property
    def kafka_key(self) -> dg.AssetKey:
        """``ks/t/kafka_t``: the table's change topic."""
        return self._key(SYSTEM_KAFKA, self.spec.table)

    @property
    def postgres_key(self) -> dg.AssetKey:
        """``ks/t/postgres_<target table>``: the PostgreSQL copy."""
        return self._key(SYSTEM_POSTGRES, self.spec.target_table)

    @property
    def target_index_key(self) -> dg.AssetKey:
        """``ks/t/target_index_t``: the PostgreSQL side of a reconciliation, per slice."""
        return self._key(SYSTEM_TARGET_INDEX, self.spec.table)

    @property
    def reconciliation_key(self) -> dg.AssetKey:
        """``ks/t/reconciliation_t``: the diff, one partition per token slice."""
        return self._key(SYSTEM_RECONCILIATION, self.spec.table)

    @property
    def repair_key(self) -> dg.AssetKey:
        """``ks/t/repair_t``: the repair of the verified discrepancies, per token slice."""
        return self._key(SYSTEM_REPAIR, self.spec.table)

    @property
    def observe_op(self) -> str:
        """The step observing the table's three external assets and evaluating its checks."""
        return f"observe__{self.ident}"

    @property
    def reconcile_job(self) -> str:
        return f"reconcile__{self.ident}"

    @property
    def repair_job(self) -> str:
        return f"repair_slice__{self.ident}"

    @property
    def initial_load_job(self) -> str:
        return f"initial_load__{self.ident}"

    @property
    def repair_op(self) -> str:
        """The repair asset's op, as run config names it: ``demo__orders__repair_orders``."""
        return "__".join(self.repair_key.path)

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
