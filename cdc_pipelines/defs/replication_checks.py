"""Replication checks: can the PostgreSQL copy of a table be trusted right now?

Lag SLO and freshness read the consumer-lag sensor's latest observation, row-count
parity counts both sides, the discrepancy rate reads the last reconciliation of every
slice. Each check reports why it failed, including "could not be evaluated".
"""

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.defs.resources import PostgresResource, ScyllaResource
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.quality.counts import source_row_count, target_row_count
from cdc_pipelines.quality.parity import evaluate_parity

CHECK_LAG = "lag_within_slo"
CHECK_FRESHNESS = "freshness"
CHECK_PARITY = "row_count_parity"
CHECK_DISCREPANCY_RATE = "discrepancy_rate"
LAG_OBSERVER = "consumer_lag_sensor"
"""The ``observed_by`` value of the lag sensor's observations, which the checks read."""
OBSERVATIONS_SCANNED = 50
"""Recent observations searched for the lag sensor's latest (other sensors observe too)."""
OBSERVATION_MAX_AGE_S = 15 * 60.0
"""An older lag observation means the lag sensor is not running: lag and freshness fail."""
FRESHNESS_FAIL_S = 15 * 60.0
"""PostgreSQL older than this behind the source fails freshness; past the lag SLO it warns."""
MAX_DISCREPANCY_RATE = 0.001
"""Above this share of rows, discrepancies fail with ERROR; any discrepancy at all warns."""


@dataclass(frozen=True)
class LagObservation:
    """The lag sensor's latest word on a table."""

    observed_at: float
    lag_messages: int
    lag_seconds: float | None
    status: str

    @property
    def replicated_as_of(self) -> float:
        """PostgreSQL reflects the source as of this time (caught up: the observation time)."""
        return self.observed_at - (self.lag_seconds or 0.0)


def latest_lag_observation(instance: dg.DagsterInstance, key: dg.AssetKey) -> LagObservation | None:
    records = instance.fetch_observations(key, limit=OBSERVATIONS_SCANNED).records
    for record in records:
        observation = record.asset_observation
        if observation is None:
            continue
        metadata = observation.metadata
        observer = metadata.get("observed_by")
        if observer is None or observer.value != LAG_OBSERVER:
            continue
        seconds = _value(metadata.get("lag_seconds"), None)
        return LagObservation(
            observed_at=record.timestamp,
            lag_messages=int(_value(metadata.get("lag_messages"), 0)),
            lag_seconds=None if seconds is None else float(seconds),
            status=str(_value(metadata.get("lag_status"), "unknown")),
        )
    return None


def _value(entry: dg.MetadataValue | None, default: Any) -> Any:
    return default if entry is None or entry.value is None else entry.value


def replication_check_specs(names: TableNames) -> list[dg.AssetCheckSpec]:
    slo = names.table.lag_slo
    key = names.postgres_key
    return [
        dg.AssetCheckSpec(
            CHECK_LAG,
            asset=key,
            description=(
                f"The sink is at most {slo.max_messages} messages and {slo.max_seconds:g}s behind "
                "the source (the lag SLO), per the consumer-lag sensor's latest observation."
            ),
        ),
        dg.AssetCheckSpec(
            CHECK_FRESHNESS,
            asset=key,
            description=(
                f"PostgreSQL reflects the source as of less than {FRESHNESS_FAIL_S / 60:g} minutes "
                f"ago (warns past the lag SLO of {slo.max_seconds:g}s)."
            ),
        ),
        dg.AssetCheckSpec(
            CHECK_PARITY,
            asset=key,
            description=(
                "ScyllaDB and PostgreSQL hold the same number of rows, give or take the messages "
                "in flight (and a tolerance when either count is an estimate)."
            ),
        ),
        dg.AssetCheckSpec(
            CHECK_DISCREPANCY_RATE,
            asset=key,
            description=(
                "The last reconciliation of every slice found no discrepancy; above "
                f"{MAX_DISCREPANCY_RATE:.1%} of rows it fails with ERROR."
            ),
            additional_deps=[names.reconciliation_key],
        ),
    ]


def replication_checks(names: TableNames) -> dg.AssetChecksDefinition:
    """Lag SLO, freshness, row-count parity and discrepancy rate of one table's PostgreSQL copy."""
    slo = names.table.lag_slo
    key = names.postgres_key

    @dg.multi_asset_check(
        specs=replication_check_specs(names),
        name=f"replication_checks__{names.ident}",
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, scylla: ScyllaResource, postgres: PostgresResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = {k.name for k in context.selected_asset_check_keys}
        now = time.time()
        observation = latest_lag_observation(context.instance, key)
        if CHECK_LAG in selected:
            yield _lag_result(key, observation, slo.max_messages, slo.max_seconds, now)
        if CHECK_FRESHNESS in selected:
            yield _freshness_result(key, observation, slo.max_seconds, now)
        if CHECK_PARITY in selected:
            in_flight = observation.lag_messages if observation else 0
            try:
                with scylla.session(names.table.scylla) as session:
                    source = source_row_count(session, names.spec)
                with postgres.connection() as conn:
                    target = target_row_count(
                        conn, names.spec.target_schema, names.spec.target_table
                    )
            except CdcPipelinesError as exc:
                context.log.error(f"row-count parity of {names.source} not evaluated: {exc}")
                yield dg.AssetCheckResult(
                    check_name=CHECK_PARITY,
                    asset_key=key,
                    passed=False,
                    description=f"not evaluated: {exc}",
                )
            else:
                verdict = evaluate_parity(source, target, in_flight)
                yield dg.AssetCheckResult(
                    check_name=CHECK_PARITY,
                    asset_key=key,
                    passed=verdict.passed,
                    description=verdict.reason,
                    metadata={
                        "source_rows": source.rows,
                        "source_method": source.method,
                        "target_rows": target.rows,
                        "target_method": target.method,
                        "in_flight": in_flight,
                        "difference": verdict.difference,
                        "allowed": verdict.allowed,
                    },
                )
        if CHECK_DISCREPANCY_RATE in selected:
            yield _discrepancy_result(context.instance, names)

    return _checks


def _no_observation(
    check_name: str, key: dg.AssetKey, observation: LagObservation | None, now: float
) -> dg.AssetCheckResult | None:
    if observation is None:
        return dg.AssetCheckResult(
            check_name=check_name,
            asset_key=key,
            passed=False,
            description="no lag observation yet: is the consumer_lag sensor running?",
        )
    age = now - observation.observed_at
    if age > OBSERVATION_MAX_AGE_S:
        return dg.AssetCheckResult(
            check_name=check_name,
            asset_key=key,
            passed=False,
            description=f"the latest lag observation is {age / 60:.0f} minutes old: is the consumer_lag sensor running?",
            metadata={"observation_age_s": round(age, 1)},
        )
    return None


def _lag_result(
    key: dg.AssetKey,
    observation: LagObservation | None,
    max_messages: int,
    max_seconds: float,
    now: float,
) -> dg.AssetCheckResult:
    missing = _no_observation(CHECK_LAG, key, observation, now)
    if missing is not None or observation is None:
        return missing or dg.AssetCheckResult(check_name=CHECK_LAG, asset_key=key, passed=False)
    seconds = observation.lag_seconds
    within = observation.lag_messages <= max_messages and (
        seconds is None or seconds <= max_seconds
    )
    return dg.AssetCheckResult(
        check_name=CHECK_LAG,
        asset_key=key,
        passed=within,
        description=(
            f"{observation.lag_messages} messages and "
            f"{'unknown' if seconds is None else f'{seconds:.1f}s'} behind "
            f"(SLO {max_messages} messages, {max_seconds:g}s); Burrow status {observation.status}"
        ),
        metadata={
            "lag_messages": observation.lag_messages,
            "lag_seconds": seconds,
            "lag_status": observation.status,
            "slo_max_messages": max_messages,
            "slo_max_seconds": max_seconds,
        },
    )


def _freshness_result(
    key: dg.AssetKey, observation: LagObservation | None, warn_after_s: float, now: float
) -> dg.AssetCheckResult:
    missing = _no_observation(CHECK_FRESHNESS, key, observation, now)
    if missing is not None or observation is None:
        return missing or dg.AssetCheckResult(
            check_name=CHECK_FRESHNESS, asset_key=key, passed=False
        )
    behind = max(0.0, now - observation.replicated_as_of)
    metadata: dict[str, Any] = {
        "replicated_as_of": dg.MetadataValue.timestamp(observation.replicated_as_of),
        "behind_s": round(behind, 1),
    }
    if behind > FRESHNESS_FAIL_S:
        return dg.AssetCheckResult(
            check_name=CHECK_FRESHNESS,
            asset_key=key,
            passed=False,
            description=f"PostgreSQL is {behind / 60:.1f} minutes behind the source",
            metadata=metadata,
        )
    if behind > warn_after_s:
        return dg.AssetCheckResult(
            check_name=CHECK_FRESHNESS,
            asset_key=key,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"PostgreSQL is {behind:.0f}s behind the source, past the lag SLO",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=CHECK_FRESHNESS,
        asset_key=key,
        passed=True,
        description=f"PostgreSQL is {behind:.0f}s behind the source",
        metadata=metadata,
    )


def _discrepancy_result(instance: dg.DagsterInstance, names: TableNames) -> dg.AssetCheckResult:
    key = names.postgres_key
    latest: dict[str, Mapping[str, dg.MetadataValue]] = {}
    records = instance.fetch_materializations(
        names.reconciliation_key, limit=names.slice_count * 4
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is None or materialization.partition is None:
            continue
        latest.setdefault(materialization.partition, materialization.metadata)
    if not latest:
        return dg.AssetCheckResult(
            check_name=CHECK_DISCREPANCY_RATE,
            asset_key=key,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{names.source} was never reconciled",
        )
    discrepancies = sum(int(_value(m.get("discrepancies"), 0)) for m in latest.values())
    rows = sum(
        max(int(_value(m.get("source_rows"), 0)), int(_value(m.get("target_rows"), 0)))
        for m in latest.values()
    )
    rate = discrepancies / rows if rows else (1.0 if discrepancies else 0.0)
    metadata: dict[str, Any] = {
        "discrepancies": discrepancies,
        "rows_compared": rows,
        "rate": rate,
        "slices_reconciled": f"{len(latest)} of {names.slice_count}",
        "slices_with_discrepancies": dg.MetadataValue.json(
            sorted(p for p, m in latest.items() if int(_value(m.get("discrepancies"), 0)))
        ),
    }
    description = (
        f"{discrepancies} discrepancies in {rows} rows ({rate:.4%}) over {len(latest)} of "
        f"{names.slice_count} slices"
    )
    if discrepancies == 0:
        return dg.AssetCheckResult(
            check_name=CHECK_DISCREPANCY_RATE,
            asset_key=key,
            passed=True,
            description=description,
            metadata=metadata,
        )
    severity = (
        dg.AssetCheckSeverity.ERROR if rate > MAX_DISCREPANCY_RATE else dg.AssetCheckSeverity.WARN
    )
    return dg.AssetCheckResult(
        check_name=CHECK_DISCREPANCY_RATE,
        asset_key=key,
        passed=False,
        severity=severity,
        description=description,
        metadata=metadata,
    )
