"""Run a table's expectations with Great Expectations and report one outcome per expectation.

On PostgreSQL the suite runs against a SQL datasource over ``SELECT * FROM <schema>.<table>``:
Great Expectations computes every metric with SQL, so only aggregates and a few
unexpected values leave the database. A source sample runs on a pandas DataFrame.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc_pipelines.errors import ConfigError, ServiceError
from cdc_pipelines.quality.expectations import DeclaredExpectation, gx_expectation

if TYPE_CHECKING:
    import pandas as pd

UNEXPECTED_SAMPLE_SIZE = 5
VALUE_TEXT_LIMIT = 80
SQLALCHEMY_DRIVER = "postgresql+psycopg2"
"""dagster-postgres and Great Expectations both go through SQLAlchemy; psycopg2 is the
driver that works with SQLAlchemy 2.1 here (see docs/adr/0002-dagster-storage-url.md)."""


@dataclass(frozen=True)
class ExpectationOutcome:
    """The verdict on one declared expectation, with what was observed."""

    name: str
    description: str
    success: bool
    evaluated_on: str
    element_count: int | None = None
    unexpected_count: int | None = None
    observed_value: str | None = None
    unexpected_sample: tuple[str, ...] = ()
    error: str | None = None


def sqlalchemy_url(dsn: str) -> str:
    """A SQLAlchemy URL (psycopg2 driver) for a libpq DSN, URL or ``key=value`` form."""
    from sqlalchemy.engine import URL

    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError for unparsable text
        raise ConfigError(f"CDC_POSTGRES_DSN cannot be parsed: {exc}") from None
    port = params.pop("port", None)
    query = {
        k: str(v) for k, v in params.items() if k not in ("user", "password", "host", "dbname")
    }
    return URL.create(
        SQLALCHEMY_DRIVER,
        username=_opt(params.get("user")),
        password=_opt(params.get("password")),
        host=_opt(params.get("host")),
        port=int(port) if port else None,
        database=_opt(params.get("dbname")),
        query=query,
    ).render_as_string(hide_password=False)


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run(
    context: Any,
    batch_definition: Any,
    declared: Sequence[DeclaredExpectation],
    evaluated_on: str,
    batch_parameters: Mapping[str, Any] | None = None,
) -> list[ExpectationOutcome]:
    import great_expectations as gx

    suite = context.suites.add(gx.ExpectationSuite(name="declared"))
    by_id = {}
    for item in declared:
        expectation = suite.add_expectation(gx_expectation(item.expectation))
        by_id[expectation.id] = item
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="declared", data=batch_definition, suite=suite)
    )
    result = validation.run(
        batch_parameters=dict(batch_parameters or {}),
        result_format={
            "result_format": "SUMMARY",
            "partial_unexpected_count": UNEXPECTED_SAMPLE_SIZE,
        },
    )
    outcomes = []
    for item_result in result.results:
        item = by_id[item_result.expectation_config.id]
        details = item_result.result or {}
        info = item_result.exception_info or {}
        error = info.get("exception_message") if info.get("raised_exception") else None
        observed = details.get("observed_value")
        outcomes.append(
            ExpectationOutcome(
                name=item.name,
                description=item.description,
                success=bool(item_result.success) and error is None,
                evaluated_on=evaluated_on,
                element_count=_int(details.get("element_count")),
                unexpected_count=_int(details.get("unexpected_count")),
                observed_value=None if observed is None else _short(observed),
                unexpected_sample=tuple(
                    _short(v) for v in details.get("partial_unexpected_list") or ()
                ),
                error=error,
            )
        )
    order = {item.name: i for i, item in enumerate(declared)}
    return sorted(outcomes, key=lambda o: order[o.name])


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text[:VALUE_TEXT_LIMIT]


def validate_postgres_table(
    dsn: str, schema: str, table: str, declared: Sequence[DeclaredExpectation]
) -> list[ExpectationOutcome]:
    """Run ``declared`` server-side on ``schema.table``; a failure to connect is a ServiceError."""
    if not declared:
        return []
    query = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    context = _context()
    try:
        source = context.data_sources.add_postgres("target", connection_string=sqlalchemy_url(dsn))
        asset = source.add_query_asset("table", query=query.as_string(None))
    except Exception as exc:  # GX wraps driver errors in TestConnectionError
        raise ServiceError(
            f"Great Expectations could not read PostgreSQL table {schema}.{table}: {exc}; "
            "check CDC_POSTGRES_DSN and that the sink created the table"
        ) from None
    batch = asset.add_batch_definition_whole_table("whole table")
    return _run(context, batch, declared, f"PostgreSQL {schema}.{table} (server-side)")


def validate_sample(
    frame: pd.DataFrame,
    declared: Sequence[DeclaredExpectation],
    evaluated_on: str,
    row_count: int | None = None,
) -> list[ExpectationOutcome]:
    """Run column expectations on ``frame``; ``row_count_between`` uses ``row_count`` instead.

    A row-count expectation on a sample would check the sample size, so it is evaluated
    against the table's own count when one is given and reported as unknown otherwise.
    """
    column_items = [d for d in declared if d.expectation.kind != "row_count_between"]
    outcomes = []
    if column_items:
        context = _context()
        asset = context.data_sources.add_pandas("sample").add_dataframe_asset("rows")
        batch = asset.add_batch_definition_whole_dataframe("sample")
        outcomes = _run(context, batch, column_items, evaluated_on, {"dataframe": frame})
    for item in declared:
        if item.expectation.kind == "row_count_between":
            outcomes.append(_row_count_outcome(item, row_count))
    order = {item.name: i for i, item in enumerate(declared)}
    return sorted(outcomes, key=lambda o: order[o.name])


def _row_count_outcome(item: DeclaredExpectation, row_count: int | None) -> ExpectationOutcome:
    low, high = item.expectation.min, item.expectation.max
    if row_count is None:
        return ExpectationOutcome(
            item.name,
            item.description,
            success=False,
            evaluated_on="source row count",
            error="the source row count is unknown (COUNT timed out and no size estimate)",
        )
    within = (low is None or row_count >= low) and (high is None or row_count <= high)
    return ExpectationOutcome(
        item.name,
        item.description,
        success=within,
        evaluated_on="source row count",
        observed_value=str(row_count),
    )
