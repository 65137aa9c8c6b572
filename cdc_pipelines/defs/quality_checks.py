"""Data-quality checks: the declared expectations, run with Great Expectations.

Target-side expectations run server-side on PostgreSQL; source-side ones on a LIMITed
sample of ScyllaDB, as blocking checks, so a failing source stops a repair from using it.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from cdc_pipelines.defs.names import TableNames
from cdc_pipelines.defs.resources import PostgresResource, ScyllaResource
from cdc_pipelines.errors import CdcPipelinesError
from cdc_pipelines.quality.counts import source_row_count
from cdc_pipelines.quality.expectations import (
    DeclaredExpectation,
    columns_needed,
    declared_expectations,
)
from cdc_pipelines.quality.sample import sample_source_rows
from cdc_pipelines.quality.validate import (
    ExpectationOutcome,
    validate_postgres_table,
    validate_sample,
)


def _quality_result(
    key: dg.AssetKey, outcome: ExpectationOutcome, severity: dg.AssetCheckSeverity
) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {"evaluated_on": outcome.evaluated_on}
    if outcome.element_count is not None:
        metadata["rows_checked"] = outcome.element_count
    if outcome.unexpected_count is not None:
        metadata["unexpected_rows"] = outcome.unexpected_count
    if outcome.observed_value is not None:
        metadata["observed"] = outcome.observed_value
    if outcome.unexpected_sample:
        metadata["unexpected_sample"] = dg.MetadataValue.json(list(outcome.unexpected_sample))
    if outcome.error:
        metadata["error"] = outcome.error
    return dg.AssetCheckResult(
        check_name=outcome.name,
        asset_key=key,
        passed=outcome.success,
        severity=severity,
        description=outcome.description
        + ("" if outcome.success else f" — failed on {outcome.evaluated_on}"),
        metadata=metadata,
    )


def _failed_all(
    key: dg.AssetKey,
    declared: tuple[DeclaredExpectation, ...],
    reason: str,
    severity: dg.AssetCheckSeverity,
) -> Iterator[dg.AssetCheckResult]:
    for item in declared:
        yield dg.AssetCheckResult(
            check_name=item.name,
            asset_key=key,
            passed=False,
            severity=severity,
            description=f"not evaluated: {reason}",
        )


def target_quality_checks(names: TableNames) -> dg.AssetChecksDefinition | None:
    """The table's target-side expectations, run server-side on PostgreSQL."""
    declared = declared_expectations(names.spec, "target")
    if not declared:
        return None
    key = names.postgres_key

    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(d.name, asset=key, description=d.description) for d in declared],
        name=f"target_quality__{names.ident}",
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, postgres: PostgresResource
    ) -> Iterator[dg.AssetCheckResult]:
        try:
            outcomes = validate_postgres_table(
                postgres.dsn, names.spec.target_schema, names.spec.target_table, declared
            )
        except CdcPipelinesError as exc:
            context.log.error(str(exc))
            yield from _failed_all(key, declared, str(exc), dg.AssetCheckSeverity.ERROR)
            return
        for outcome in outcomes:
            yield _quality_result(key, outcome, dg.AssetCheckSeverity.ERROR)

    return _checks


def source_quality_checks(names: TableNames) -> dg.AssetChecksDefinition | None:
    """The table's source-side expectations on a LIMITed sample; failing blocks repair."""
    declared = declared_expectations(names.spec, "source")
    if not declared:
        return None
    key = names.scylla_key

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(d.name, asset=key, description=d.description, blocking=True)
            for d in declared
        ],
        name=f"source_quality__{names.ident}",
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, scylla: ScyllaResource
    ) -> Iterator[dg.AssetCheckResult]:
        try:
            with scylla.session(names.table.scylla) as session:
                frame = sample_source_rows(session, names.spec, columns_needed(declared))
                counts = (
                    source_row_count(session, names.spec)
                    if any(d.expectation.kind == "row_count_between" for d in declared)
                    else None
                )
            outcomes = validate_sample(
                frame,
                declared,
                f"a sample of {len(frame)} source rows",
                row_count=None if counts is None else counts.rows,
            )
        except CdcPipelinesError as exc:
            context.log.error(str(exc))
            yield from _failed_all(key, declared, str(exc), dg.AssetCheckSeverity.ERROR)
            return
        for outcome in outcomes:
            yield _quality_result(key, outcome, dg.AssetCheckSeverity.ERROR)

    return _checks
