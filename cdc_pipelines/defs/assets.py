"""Per declared table, the lineage of the pipeline as assets, in one group per table.

For ``demo.orders``: ``demo/orders/scylla_orders`` → ``kafka_orders`` → ``postgres_orders``
are observed, not materialized (Kafka Connect moves the data): one step observes all three
and evaluates the table's replication checks (:func:`observed_assets`), and sensors observe
them too. ``target_index_orders``, ``reconciliation_orders`` and ``repair_orders`` (one
partition per token slice) are materialized by this code location. Keys and partitions come
from :mod:`.names`.
"""

import warnings
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg

from cdc_pipelines.defs import health, replication_checks
from cdc_pipelines.defs.names import SOURCE_SCAN_POOL, TableNames
from cdc_pipelines.defs.reconciliation import (
    SLICE_CHECK,
    SLICE_CHECK_SEVERITY,
    build_target_index,
    index_metadata,
    reconcile_slice,
    repair_metadata,
    repair_result,
    repair_slice,
    slice_check_result,
    slice_metadata,
)
from cdc_pipelines.defs.resources import (
    KafkaConnectResource,
    KafkaResource,
    PostgresResource,
    PushgatewayResource,
    ScratchStorageResource,
    ScyllaResource,
    connection_settings,
)
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.observability import metrics
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.postgres.types import column_pg_type
from cdc_pipelines.reconcile.index_step import ScanMarker
from cdc_pipelines.reconcile.scratch import ScratchLayout

RECONCILIATION_FAIL_WINDOW = timedelta(hours=26)
"""The nightly reconciliation runs every 24 h; two hours of grace before it counts as late."""
RECONCILIATION_WARN_WINDOW = timedelta(hours=25)
METRICS_JOB = metrics.RECONCILE_JOB
KIND_SCYLLA = "scylladb"  # the kind the Dagster UI draws with ScyllaDB's icon
KIND_KAFKA = "kafka"
KIND_POSTGRES = "postgres"
KIND_ARROW = "arrow"


def owners(names: TableNames) -> list[str]:
    """Dagster owners: e-mail addresses as written, anything else as a team."""
    return [o if "@" in o or o.startswith("team:") else f"team:{o}" for o in names.spec.owners]


def _about(names: TableNames) -> str:
    """The declared description as a further sentence, or nothing."""
    text = (names.spec.description or "").strip().rstrip(".")
    return f" {text}." if text else ""


def source_spec(names: TableNames) -> dg.AssetSpec:
    spec = names.spec
    return dg.AssetSpec(
        key=names.scylla_key,
        description=(
            f"ScyllaDB table {spec.source}, the system of record.{_about(names)} The Scylla CDC "
            "source connector captures every change to it."
        ),
        group_name=names.group,
        kinds={KIND_SCYLLA},
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
            f"Kafka topic {names.topic}, the change events of {names.source} in order per key. "
            f"Records the sink cannot convert go to {names.dlq_topic}."
        ),
        group_name=names.group,
        kinds={KIND_KAFKA},
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
            f"PostgreSQL table {spec.target}, the copy of {spec.source} kept current by the "
            f"JDBC sink connector {names.sink}.{_about(names)} Its checks say whether the copy "
            "can be trusted."
        ),
        group_name=names.group,
        kinds={KIND_POSTGRES},
        owners=owners(names),
        metadata={
            "dagster/table_name": spec.target,
            "dagster/column_schema": dg.TableSchema(columns=columns),
            "sink_connector": names.sink,
            "consumer_group": names.consumer_group,
        },
    )


def observed_assets(names: TableNames) -> dg.AssetsDefinition:
    """The table's source, topic and PostgreSQL copy, observed together with one step.

    The step measures the table's health now (:func:`health.measure`), records one
    observation per asset (numbers the UI plots over time) and evaluates the replication
    checks against the same measurement, so each check's result matches what the
    observation shows. The ``replication_checks`` job runs it for every table.
    """
    with warnings.catch_warnings():
        # A beta API in Dagster 1.13: one step observing several assets, with checks.
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.multi_observable_source_asset(
            name=names.observe_op,
            specs=[source_spec(names), topic_spec(names), target_spec(names)],
            check_specs=replication_checks.replication_check_specs(names),
            description=(
                f"Observes {names.source}'s replication: consumer lag, the sink connector, the "
                "dead-letter queue, row counts on both sides and the latest reconciliation; then "
                "evaluates its replication checks against those numbers."
            ),
        )
        def observe(
            context: dg.AssetExecutionContext,
            scylla: ScyllaResource,
            postgres: PostgresResource,
            kafka: KafkaResource,
            kafka_connect: KafkaConnectResource,
        ) -> Iterator[dg.ObserveResult]:
            measured = health.measure(
                names, context.instance, scylla, postgres, kafka, kafka_connect
            )
            for problem in measured.problems:
                context.log.warning(f"{names.source}: {problem}")
            observed = health.observations(names, measured)
            yield dg.ObserveResult(asset_key=names.scylla_key, metadata=observed.source)
            yield dg.ObserveResult(asset_key=names.kafka_key, metadata=observed.topic)
            yield dg.ObserveResult(
                asset_key=names.postgres_key,
                metadata=observed.target,
                check_results=replication_checks.evaluate(names, measured),
            )

    return observe


def slices_partitions(names: TableNames) -> dg.StaticPartitionsDefinition:
    """One partition per token slice, keyed by the slice id and its token range."""
    return dg.StaticPartitionsDefinition(list(names.slices))


def slice_check_spec(
    names: TableNames, partitions: dg.StaticPartitionsDefinition
) -> dg.AssetCheckSpec:
    """The per-slice check of the reconciliation asset, with one result per partition."""
    with warnings.catch_warnings():
        # A partitioned check is a preview in Dagster 1.13; without partitions_def its result
        # would not be attached to the slice it is about, and the check's per-partition
        # status could not show which slices disagree.
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            SLICE_CHECK,
            asset=names.reconciliation_key,
            partitions_def=partitions,
            description=(
                f"PostgreSQL agrees with ScyllaDB in this token slice of {names.source}: no "
                "missing, extra or mismatched row after the re-read. Fails with "
                f"{SLICE_CHECK_SEVERITY.value} on a slice with discrepancies, with the counts."
            ),
        )


def target_index_asset(names: TableNames) -> dg.AssetsDefinition:
    @dg.asset(
        key=names.target_index_key,
        deps=[names.postgres_key],
        description=(
            f"Target index of {names.spec.target}: keys, row hashes and versions of every row, "
            f"bucketed by token slice ({names.slice_count} slices) in one pass. The PostgreSQL "
            f"side of {names.source}'s reconciliation; it also records the topic's end offsets "
            "that verification waits for."
        ),
        group_name=names.group,
        kinds={KIND_POSTGRES, KIND_ARROW},
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
        layout = ScratchLayout(root, names.source)
        scan = ScanMarker.read(layout)
        if scan.end_offsets is None:
            context.log.warning(f"topic end offsets unknown: {scan.kafka_error}")
        return dg.MaterializeResult(metadata=index_metadata(manifest, layout.index_dir, scan))

    return target_index


def reconciliation_asset(names: TableNames) -> dg.AssetsDefinition:
    partitions = slices_partitions(names)

    @dg.asset(
        key=names.reconciliation_key,
        deps=[names.target_index_key, names.scylla_key],
        partitions_def=partitions,
        check_specs=[slice_check_spec(names, partitions)],
        pool=SOURCE_SCAN_POOL,
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=RECONCILIATION_FAIL_WINDOW, warn_window=RECONCILIATION_WARN_WINDOW
        ),
        description=(
            f"Reconciliation of {names.source}: the rows that differ between ScyllaDB and "
            "PostgreSQL (missing, extra or mismatched), one token slice per partition. A full "
            f"backfill is a full reconciliation; the {SLICE_CHECK} check shows which slices "
            "disagree."
        ),
        group_name=names.group,
        kinds={KIND_SCYLLA, KIND_ARROW},
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
            names.slice_id(context.partition_key),
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
                    metrics.RECONCILE_DISCREPANCIES(tally.confirmed, labels),
                    metrics.RECONCILE_SOURCE_ROWS(summary.source_rows, labels),
                    metrics.RECONCILE_ROWS_PER_SECOND(summary.rows_per_s, labels),
                ],
                grouping=labels,
            )
        except ServiceError as exc:
            context.log.warning(f"metrics not pushed: {exc}")
        return dg.MaterializeResult(
            metadata=slice_metadata(verdict), check_results=[slice_check_result(verdict)]
        )

    return reconciliation


class RepairConfig(dg.Config):
    """Repairs change PostgreSQL only when ``apply`` is set explicitly in the run config.

    An applied repair writes nothing when the sink's catch-up could not be confirmed (the
    broker was unreachable, the sink stalled past the timeout: rows still in flight may look
    like discrepancies); ``allow_unconfirmed`` repairs anyway (ADR 0009).
    """

    apply: bool = False
    audit: str = AuditDetail.KEYS.value  # or "exceptions": upserts only counted per batch
    allow_unconfirmed: bool = False

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
            f"Repair of {names.spec.target}: fixes one token slice's verified discrepancies "
            "from the source rows, never overwriting a newer row. A dry run (the default) only "
            "writes the SQL; run with config apply: true to change PostgreSQL. Refused (nothing "
            "written) when the sink's catch-up is unconfirmed, unless allow_unconfirmed: true. "
            "Blocked when the source's data-quality checks fail."
        ),
        group_name=names.group,
        kinds={KIND_POSTGRES},
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
            names.slice_id(context.partition_key),
            connection_settings(scylla, postgres, kafka),
            scratch.root(),
            apply=config.apply,
            audit_detail=audit_detail,
            allow_unconfirmed=config.allow_unconfirmed,
        )
        if repair.refused is not None:
            context.log.warning(f"{names.source} slice {context.partition_key}: {repair.refused}")
        else:
            context.log.info(
                f"{names.source} slice {context.partition_key}: {repair_result(repair)}"
            )
        return dg.MaterializeResult(metadata=repair_metadata(repair, audit_detail))

    return repair


def table_assets(names: TableNames) -> list[dg.AssetsDefinition]:
    return [
        observed_assets(names),
        target_index_asset(names),
        reconciliation_asset(names),
        repair_asset(names),
    ]
