"""Replication checks: can the PostgreSQL copy of a table be trusted right now?

They are evaluated in the step that observes the table's health (``replication_checks``
job, see :mod:`cdc_pipelines.defs.health`), against the very numbers that step records:
lag SLO and freshness from the lag measured then, row-count parity from both counts, the
discrepancy verdict from the latest reconciliation of every slice. Each check says why it
failed, including "not evaluated" and why.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from cdc_pipelines.config import LagSlo
from cdc_pipelines.defs.health import TableHealth
from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.quality.parity import evaluate_parity

CHECK_LAG = "lag_within_slo"
CHECK_FRESHNESS = "freshness"
CHECK_PARITY = "row_count_parity"
CHECK_DISCREPANCY_RATE = "discrepancy_rate"
REPLICATION_CHECKS = (CHECK_LAG, CHECK_FRESHNESS, CHECK_PARITY, CHECK_DISCREPANCY_RATE)
FRESHNESS_FAIL_S = 15 * 60.0
"""PostgreSQL older than this behind the source fails freshness; past the lag SLO it warns."""


def replication_check_specs(names: TableNames) -> list[dg.AssetCheckSpec]:
    slo = names.table.lag_slo
    key = names.postgres_key
    return [
        dg.AssetCheckSpec(
            CHECK_LAG,
            asset=key,
            description=(
                f"The sink is at most {slo.max_messages} messages and {slo.max_seconds:g}s behind "
                "the source (the lag SLO), as the health observation measured it."
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
                "The latest reconciliation of every slice found no row that differs. Confirmed "
                "discrepancies (missing, extra, mismatched, target ahead) fail with ERROR; "
                "verdicts left unsure by an unconfirmed catch-up, or no reconciliation yet, warn."
            ),
            additional_deps=[names.reconciliation_key],
        ),
    ]


def evaluate(names: TableNames, health: TableHealth) -> list[dg.AssetCheckResult]:
    """Every replication check of the table, against one health measurement."""
    slo = names.table.lag_slo
    return [
        lag_result(names.postgres_key, health, slo),
        freshness_result(names.postgres_key, health, slo),
        parity_result(names.postgres_key, health),
        discrepancy_result(names, health),
    ]


def _lag_unknown(health: TableHealth) -> str:
    """Why the lag is unknown, and what the consumer_lag sensor saw last."""
    reason = health.lag.problem or "no lag measured"
    recent = health.recent_lag
    if recent is None:
        return f"not evaluated: {reason}; the consumer_lag sensor has not observed it either"
    age = max(0.0, health.observed_at - recent.observed_at)
    return (
        f"not evaluated: {reason}; the consumer_lag sensor last saw {recent.lag_messages} "
        f"messages behind ({recent.status}) {age / 60:.0f} minutes ago"
    )


def lag_result(key: dg.AssetKey, health: TableHealth, slo: LagSlo) -> dg.AssetCheckResult:
    reading = health.lag
    if reading.lag_messages is None:
        return dg.AssetCheckResult(
            check_name=CHECK_LAG, asset_key=key, passed=False, description=_lag_unknown(health)
        )
    seconds = reading.lag_seconds
    within = reading.lag_messages <= slo.max_messages and (
        seconds is None or seconds <= slo.max_seconds
    )
    shown = "unknown" if seconds is None else f"{seconds:.1f}s"
    if reading.lag_seconds_is_lower_bound and seconds is not None:
        shown = f"at least {shown}"
    return dg.AssetCheckResult(
        check_name=CHECK_LAG,
        asset_key=key,
        passed=within,
        description=(
            f"{reading.lag_messages} messages and {shown} behind (SLO {slo.max_messages} "
            f"messages, {slo.max_seconds:g}s); Burrow status {reading.status}"
        ),
        metadata={
            "lag_messages": reading.lag_messages,
            "lag_seconds": dg.MetadataValue.float(seconds)
            if seconds is not None
            else dg.MetadataValue.null(),
            "lag_status": reading.status,
            "lag_status_from": reading.status_from,
            "slo_max_messages": slo.max_messages,
            "slo_max_seconds": slo.max_seconds,
        },
    )


def freshness_result(key: dg.AssetKey, health: TableHealth, slo: LagSlo) -> dg.AssetCheckResult:
    as_of = health.replicated_as_of
    if as_of is None:
        return dg.AssetCheckResult(
            check_name=CHECK_FRESHNESS,
            asset_key=key,
            passed=False,
            description=_lag_unknown(health),
        )
    behind = max(0.0, health.observed_at - as_of)
    metadata: dict[str, Any] = {
        "replicated_as_of": dg.MetadataValue.timestamp(as_of),
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
    if behind > slo.max_seconds:
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


def parity_result(key: dg.AssetKey, health: TableHealth) -> dg.AssetCheckResult:
    source, target = health.source_rows, health.target_rows
    in_flight = health.lag.lag_messages or 0
    verdict = evaluate_parity(source, target, in_flight)
    if verdict.difference is None:
        return dg.AssetCheckResult(
            check_name=CHECK_PARITY,
            asset_key=key,
            passed=False,
            description=f"not evaluated: {verdict.reason}",
        )
    return dg.AssetCheckResult(
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


def discrepancy_result(names: TableNames, health: TableHealth) -> dg.AssetCheckResult:
    """ERROR while confirmed discrepancies remain in the latest reconciliation of any slice.

    A reconciled slice's verdicts are confirmed unless its catch-up was not (ADR 0009):
    discrepancies found only in such slices may be rows in flight, so they warn, as does a
    table never reconciled. A repair counts once its slices are reconciled again.
    """
    key, verdicts = names.postgres_key, health.verdicts
    tally = verdicts.tally
    if not verdicts.slices_reconciled:
        return dg.AssetCheckResult(
            check_name=CHECK_DISCREPANCY_RATE,
            asset_key=key,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{names.source} was never reconciled",
        )
    metadata: dict[str, Any] = {
        "discrepancies": tally.confirmed,
        "missing": tally.missing,
        "extra": tally.extra,
        "mismatched": tally.mismatched,
        "target_ahead": tally.target_ahead,
        "in_flight": tally.in_flight,
        "rows_compared": verdicts.rows_compared,
        "rate": verdicts.rate,
        "slices_reconciled": f"{verdicts.slices_reconciled} of {verdicts.slice_count}",
        "slices_with_discrepancies": dg.MetadataValue.json(list(verdicts.disagreeing_slices)),
        "slices_unsure": dg.MetadataValue.json(list(verdicts.unsure_slices)),
    }
    over = f"over {verdicts.slices_reconciled} of {verdicts.slice_count} slices"
    if tally.disagreeing == 0 and not verdicts.unsure_slices:
        return dg.AssetCheckResult(
            check_name=CHECK_DISCREPANCY_RATE,
            asset_key=key,
            passed=True,
            description=f"no discrepancy in {verdicts.rows_compared} rows {over}",
            metadata=metadata,
        )
    description = (
        f"{tally.disagreeing} rows differ in {verdicts.rows_compared} ({verdicts.rate:.4%}) "
        f"{over}: {tally.missing} missing, {tally.extra} extra, {tally.mismatched} "
        f"mismatched, {tally.target_ahead} ahead of the source"
    )
    sure = set(verdicts.disagreeing_slices) - set(verdicts.unsure_slices)
    if sure:
        todo = (
            "repair the slices listed"
            if tally.confirmed
            else "the target is ahead of the source: a person must look"
        )
        return dg.AssetCheckResult(
            check_name=CHECK_DISCREPANCY_RATE,
            asset_key=key,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{description}; {todo}",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        check_name=CHECK_DISCREPANCY_RATE,
        asset_key=key,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{description}; unsure: the sink's catch-up was not confirmed in slices "
            f"{', '.join(verdicts.unsure_slices)}, so rows still in flight may be counted"
        ),
        metadata=metadata,
    )
