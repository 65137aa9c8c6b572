"""Per declared table, the lineage of the pipeline as assets.

``scylla/<ks>/<t>`` → ``kafka/<topic>`` → ``postgres/<schema>/<t>`` are external: Kafka
Connect moves the data and sensors observe it. ``target_index``, ``reconciliation``
(one partition per token slice) and ``repair`` are materialized by this code location.
"""

from datetime import timedelta

import dagster as dg

from cdc_pipelines.defs.names import SOURCE_SCAN_POOL, TableNames
from cdc_pipelines.defs.reconciliation import (
    build_target_index,
    index_metadata,
    reconcile_slice,
    repair_metadata,
    repair_slice,
    slice_metadata,
)
from cdc_pipelines.defs.resources import (
    KafkaResource,
    PostgresResource,
    PushgatewayResource,
    ScratchStorageResource,
    ScyllaResource,
    connection_settings,
)
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.observability.metrics import Gauge
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.types import column_pg_type
from cdc_pipelines.reconcile.scratch import ScratchLayout

RECONCILIATION_FAIL_WINDOW = timedelta(hours=26)
"""The nightly reconciliation runs every 24 h; two hours of grace before it counts as late."""
RECONCILIATION_WARN_WINDOW = timedelta(hours=25)
METRICS_JOB = "cdc_reconciliation"
RECONCILIATION_OBSERVER = "reconciliation"


def owners(names: TableNames) -> list[str]:
    """Dagster owners: e-mail addresses as written, anything else as a team."""
    return [o if "@" in o or o.startswith("team:") else f"team:{o}" for o in names.spec.owners]


def _about(names: TableNames) -> str:
    return names.spec.description or f"Replicated table {names.source}"


def source_spec(names: TableNames) -> dg.AssetSpec:
    spec = names.spec
    return dg.AssetSpec(
        key=names.scylla_key,
        description=(
            f"{_about(names)}. The system of record, in ScyllaDB as {spec.keyspace}.{spec.table}; "
            "the Scylla CDC source connector captures every change to it."
        ),
        group_name=names.group,
        kinds={"scylla"},
        owners=owners(names),
        metadata={
            "dagster/table_name": spec.source,
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(c.name, c.type) for c in spec.columns]
            ),
            "primary_key": dg.MetadataValue.text(", ".join(spec.primary_key)),
        },
    )


def topic_spec(names: TableNames) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=names.kafka_key,
        deps=[names.scylla_key],
        description=(
            f"Every insert, update and delete of {names.source}, in order per key, as change "
            f"events in the Kafka topic {names.topic}. Records the sink cannot convert go to "
            f"{names.dlq_topic}."
        ),
        group_name=names.group,
        kinds={"kafka"},
        owners=owners(names),
        metadata={"topic": names.topic, "dead_letter_topic": names.dlq_topic},
    )


def target_spec(names: TableNames) -> dg.AssetSpec:
    spec = names.spec
    columns = [dg.TableColumn(c.name, column_pg_type(spec, c).sql) for c in spec.replicated_columns]
    columns.append(dg.TableColumn(names.table.version_column, "bigint"))
    return dg.AssetSpec(
        key=names.postgres_key,
        deps=[names.kafka_key],
        description=(
            f"{_about(names)}. The PostgreSQL copy {spec.target}, kept current by the JDBC sink "
            f"connector {names.sink}. Sensors observe its lag, connector health and dead "
            "letters; its checks say whether the copy can be trusted."
        ),
        group_name=names.group,
        kinds={"postgres"},
        owners=owners(names),
        metadata={
            "dagster/table_name": spec.target,
            "dagster/column_schema": dg.TableSchema(columns=columns),
            "sink_connector": names.sink,
            "consumer_group": names.consumer_group,
        },
    )


def slices_partitions(names: TableNames) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(list(names.slices))


def target_index_asset(names: TableNames) -> dg.AssetsDefinition:
    @dg.asset(
        key=names.target_index_key,
        deps=[names.postgres_key],
        description=(
            f"Keys, row hashes and versions of every row of {names.spec.target}, bucketed by "
            f"token slice ({names.slice_count} slices): the PostgreSQL side of {names.source}'s "
            "reconciliation, built in one pass over the table."
        ),
        group_name=names.group,
        kinds={"postgres", "arrow"},
        owners=owners(names),
    )
    def target_index(
        context: dg.AssetExecutionContext,
        scylla: ScyllaResource,
        postgres: PostgresResource,
        kafka: KafkaResource,
        scratch: ScratchStorageResource,
    ) -> dg.MaterializeResult:
        root = scratch.root()
        manifest = build_target_index(
            names.table, connection_settings(scylla, postgres, kafka), root
        )
        context.log.info(
            f"indexed {manifest.rows} rows of {names.spec.target} in {manifest.duration_s}s"
        )
        directory = ScratchLayout(root, names.source).index_dir
        return dg.MaterializeResult(metadata=index_metadata(manifest, directory))

    return target_index


def reconciliation_asset(names: TableNames) -> dg.AssetsDefinition:
    @dg.asset(
        key=names.reconciliation_key,
        deps=[names.target_index_key, names.scylla_key],
        partitions_def=slices_partitions(names),
        pool=SOURCE_SCAN_POOL,
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=RECONCILIATION_FAIL_WINDOW, warn_window=RECONCILIATION_WARN_WINDOW
        ),
        description=(
            f"Rows of {names.source} that differ between ScyllaDB and PostgreSQL, one token "
            "slice per partition: missing in PostgreSQL, extra in PostgreSQL, or with different "
            "values. A full backfill is a full reconciliation; the partition bar shows which "
            "token ranges disagree."
        ),
        group_name=names.group,
        kinds={"scylla", "arrow"},
        owners=owners(names),
    )
    def reconciliation(
        context: dg.AssetExecutionContext,
        scylla: ScyllaResource,
        postgres: PostgresResource,
        kafka: KafkaResource,
        scratch: ScratchStorageResource,
        pushgateway: PushgatewayResource,
    ) -> dg.MaterializeResult:
        verdict = reconcile_slice(
            names.table,
            context.partition_key,
            connection_settings(scylla, postgres, kafka),
            scratch.root(),
        )
        summary, tally = verdict.outcome, verdict.tally
        context.log.info(
            f"slice {summary.slice_id}: {summary.source_rows} source rows, "
            f"{tally.confirmed} discrepancies in {summary.duration_s}s"
        )
        labels = {"table": names.source, "slice": summary.slice_id}
        try:
            pushgateway.push(
                METRICS_JOB,
                [
                    Gauge(
                        "cdc_reconciliation_discrepancies",
                        tally.confirmed,
                        "Discrepancies found in the slice",
                        labels,
                    ),
                    Gauge(
                        "cdc_reconciliation_source_rows",
                        summary.source_rows,
                        "Source rows read in the slice",
                        labels,
                    ),
                    Gauge(
                        "cdc_reconciliation_rows_per_second",
                        summary.rows_per_s,
                        "Source rows read per second",
                        labels,
                    ),
                ],
                grouping=labels,
            )
        except ServiceError as exc:
            context.log.warning(f"metrics not pushed: {exc}")
        # The replicated table's own page shows its latest reconciliation result too.
        context.log_event(
            dg.AssetObservation(
                asset_key=names.postgres_key,
                metadata={
                    "observed_by": RECONCILIATION_OBSERVER,
                    "reconciled_slice": summary.slice_id,
                    "discrepancies": tally.confirmed,
                    "missing": tally.missing,
                    "extra": tally.extra,
                    "mismatched": tally.mismatched,
                    "source_rows": summary.source_rows,
                    "target_rows": summary.target_rows,
                },
            )
        )
        return dg.MaterializeResult(metadata=slice_metadata(verdict))

    return reconciliation


class RepairConfig(dg.Config):
    """Repairs change PostgreSQL only when ``apply`` is set explicitly in the run config."""

    apply: bool = False
    audit: str = AuditDetail.KEYS.value  # or "exceptions": upserts only counted per batch

    def audit_detail(self) -> AuditDetail:
        try:
            return AuditDetail(self.audit)
        except ValueError:
            choices = ", ".join(repr(d.value) for d in AuditDetail)
            raise dg.Failure(
                f"repair config audit: {self.audit!r} is not one of {choices}"
            ) from None


def repair_asset(names: TableNames) -> dg.AssetsDefinition:
    @dg.asset(
        key=names.repair_key,
        deps=[names.reconciliation_key, names.scylla_key],
        partitions_def=slices_partitions(names),
        description=(
            f"Fixes the verified discrepancies of one slice of {names.spec.target} from the "
            "source rows, never overwriting a newer row. A dry run (the default) only writes "
            "the SQL; run with config apply: true to change PostgreSQL. Blocked when the "
            "source's data-quality checks fail."
        ),
        group_name=names.group,
        kinds={"postgres"},
        owners=owners(names),
    )
    def repair(
        context: dg.AssetExecutionContext,
        config: RepairConfig,
        scylla: ScyllaResource,
        postgres: PostgresResource,
        kafka: KafkaResource,
        scratch: ScratchStorageResource,
    ) -> dg.MaterializeResult:
        audit_detail = config.audit_detail()
        repair = repair_slice(
            names.table,
            context.partition_key,
            connection_settings(scylla, postgres, kafka),
            scratch.root(),
            apply=config.apply,
            audit_detail=audit_detail,
        )
        return dg.MaterializeResult(metadata=repair_metadata(repair, audit_detail))

    return repair


def table_assets(names: TableNames) -> list[dg.AssetSpec | dg.AssetsDefinition]:
    return [
        source_spec(names),
        topic_spec(names),
        target_spec(names),
        target_index_asset(names),
        reconciliation_asset(names),
        repair_asset(names),
    ]
