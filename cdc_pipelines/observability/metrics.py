"""The metrics cdc_pipelines pushes to the Prometheus Pushgateway, and the push itself.

Reconciliations and sensors are batch work, so their metrics are pushed rather than
scraped: one Pushgateway group per job and table (a reconciliation's also per slice),
rendered and sent by ``prometheus_client`` from a registry of its own for each push.

Every pushed metric is declared here once (:data:`METRICS`). The alerting rules in
``docker/prometheus/rules/`` and the Grafana dashboard use these names, and a unit test
checks that every metric a rule names is declared here.
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    delete_from_gateway,
    generate_latest,
    push_to_gateway,
)
from prometheus_client import Gauge as PromGauge

from cdc_pipelines.errors import ConfigError, ServiceError

PUSH_TIMEOUT_S = 5.0
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
TABLE_LABEL = "table"


@dataclass(frozen=True)
class Gauge:
    """One gauge sample with its labels."""

    name: str
    value: float
    help: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _METRIC_NAME.match(self.name):
            raise ConfigError(f"metric name {self.name!r} is not a valid Prometheus name")
        for label in self.labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ConfigError(f"label name {label!r} of {self.name} is not valid")


@dataclass(frozen=True)
class Metric:
    """A gauge family cdc_pipelines pushes: its name, help text and who pushes it."""

    name: str
    help: str
    job: str
    """The Pushgateway job whose groups carry it."""

    def __call__(self, value: float, labels: Mapping[str, str]) -> Gauge:
        return Gauge(self.name, float(value), self.help, labels)


# Pushgateway jobs.
LAG_JOB = "cdc_consumer_lag"
RECONCILE_JOB = "cdc_reconciliation"
CONNECTOR_JOB = "cdc_connector_health"
DLQ_JOB = "cdc_dead_letter_queue"
CANARY_JOB = "cdc_canary"

# consumer_lag sensor, labels table and consumer_group.
CONSUMER_LAG_MESSAGES = Metric(
    "cdc_consumer_lag_messages", "Messages the sink has not consumed", LAG_JOB
)
CONSUMER_LAG_SECONDS = Metric(
    "cdc_consumer_lag_seconds", "Age of the oldest unconsumed message", LAG_JOB
)
CONSUMER_LAG_STATUS = Metric(
    "cdc_consumer_lag_status", "Burrow status: 0 OK, 1 WARN, 2 REWIND, 3 STALL, 4 STOP", LAG_JOB
)
LAG_SLO_MESSAGES = Metric(
    "cdc_consumer_lag_slo_messages", "The table's lag SLO in messages (lag_slo)", LAG_JOB
)
LAG_SLO_SECONDS = Metric(
    "cdc_consumer_lag_slo_seconds", "The table's lag SLO in seconds (lag_slo)", LAG_JOB
)
CDC_LOG_TTL_SECONDS = Metric(
    "cdc_scylla_cdc_log_ttl_seconds",
    "TTL of the source table's CDC log: changes older than this are gone",
    LAG_JOB,
)
# Reconciliation asset, labels table and slice.
RECONCILE_DISCREPANCIES = Metric(
    "cdc_reconcile_discrepancies", "Confirmed discrepancies found in the slice", RECONCILE_JOB
)
RECONCILE_SOURCE_ROWS = Metric(
    "cdc_reconcile_source_rows", "Source rows read in the slice", RECONCILE_JOB
)
RECONCILE_ROWS_PER_SECOND = Metric(
    "cdc_reconcile_rows_per_second", "Source rows read per second", RECONCILE_JOB
)
# connector_health sensor, labels connector, table ("" for the source) and task.
CONNECTOR_TASK_FAILED = Metric(
    "cdc_connector_task_failed",
    "1 when the task (task=connector: the connector itself) is FAILED, else 0",
    CONNECTOR_JOB,
)
CONNECTOR_TASKS_RUNNING = Metric(
    "cdc_connector_tasks_running", "Tasks of the connector in state RUNNING", CONNECTOR_JOB
)
# dead_letter_queue sensor, labels table and dlq_topic.
DLQ_DEPTH = Metric("cdc_dlq_depth", "Dead letters retained in the table's DLQ topic", DLQ_JOB)
DLQ_END_OFFSET = Metric(
    "cdc_dlq_end_offset",
    "Sum of the end offsets of the table's DLQ topic: grows by one per dead letter",
    DLQ_JOB,
)
# The end-to-end canary (written at the source, read back from PostgreSQL), label table.
CANARY_LATENCY_SECONDS = Metric(
    "cdc_canary_latency_seconds",
    "Seconds from the canary's write in ScyllaDB to its arrival in PostgreSQL",
    CANARY_JOB,
)
CANARY_LAST_SUCCESS = Metric(
    "cdc_canary_last_success_timestamp_seconds",
    "Unix time at which a canary write last arrived in PostgreSQL",
    CANARY_JOB,
)

METRICS: tuple[Metric, ...] = (
    CONSUMER_LAG_MESSAGES,
    CONSUMER_LAG_SECONDS,
    CONSUMER_LAG_STATUS,
    LAG_SLO_MESSAGES,
    LAG_SLO_SECONDS,
    CDC_LOG_TTL_SECONDS,
    RECONCILE_DISCREPANCIES,
    RECONCILE_SOURCE_ROWS,
    RECONCILE_ROWS_PER_SECOND,
    CONNECTOR_TASK_FAILED,
    CONNECTOR_TASKS_RUNNING,
    DLQ_DEPTH,
    DLQ_END_OFFSET,
    CANARY_LATENCY_SECONDS,
    CANARY_LAST_SUCCESS,
)
"""Every metric cdc_pipelines pushes."""


def registry_of(gauges: Iterable[Gauge]) -> CollectorRegistry:
    """A fresh registry holding ``gauges``; every sample of one name has the same label names."""
    registry = CollectorRegistry(auto_describe=True)
    families: dict[str, tuple[PromGauge, tuple[str, ...]]] = {}
    for gauge in gauges:
        names = tuple(sorted(gauge.labels))
        if gauge.name not in families:
            families[gauge.name] = (
                PromGauge(gauge.name, gauge.help, names, registry=registry),
                names,
            )
        family, expected = families[gauge.name]
        if names != expected:
            raise ConfigError(
                f"{gauge.name} is pushed with labels {list(names)} and {list(expected)}; "
                "every sample of a metric needs the same label names"
            )
        (family.labels(**gauge.labels) if names else family).set(gauge.value)
    return registry


def render(gauges: Sequence[Gauge]) -> str:
    """The text exposition format of ``gauges``, as a push sends it."""
    return generate_latest(registry_of(gauges)).decode()


def _send(pushgateway_url: str, what: str, call: Callable[[], None]) -> None:
    try:
        call()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()[:300]
        raise ServiceError(
            f"the Pushgateway at {exc.url} refused {what} ({exc.code}): {body}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ServiceError(
            f"cannot push metrics to the Pushgateway at {pushgateway_url}: {exc}; "
            "check CDC_PUSHGATEWAY_URL and that the Pushgateway runs"
        ) from None


def push(
    pushgateway_url: str,
    job: str,
    gauges: Sequence[Gauge],
    grouping: Mapping[str, str] | None = None,
) -> None:
    """Replace the metrics of the group ``job`` (+ ``grouping`` labels) with ``gauges``."""
    registry = registry_of(gauges)
    _send(
        pushgateway_url,
        "the metrics",
        lambda: push_to_gateway(
            pushgateway_url,
            job=job,
            registry=registry,
            grouping_key=dict(grouping or {}),
            timeout=PUSH_TIMEOUT_S,
        ),
    )


def delete_group(pushgateway_url: str, job: str, grouping: Mapping[str, str] | None = None) -> None:
    """Delete exactly the group ``job`` (+ ``grouping``); other groups of the job stay."""
    _send(
        pushgateway_url,
        "the deletion",
        lambda: delete_from_gateway(
            pushgateway_url, job=job, grouping_key=dict(grouping or {}), timeout=PUSH_TIMEOUT_S
        ),
    )


def push_per_table(
    pushgateway_url: str, job: str, gauges: Sequence[Gauge], also: Sequence[str] = ()
) -> None:
    """Push ``gauges`` as one group per ``table`` label (``job``/``table``, and the labels
    ``also`` names), table by table.

    The job's group without a table goes first: earlier versions pushed every table there,
    and the Pushgateway refuses a group whose series another group already holds. Stops at
    the first group the Pushgateway does not take: the rest would fail alike.
    """
    groups: dict[tuple[tuple[str, str], ...], list[Gauge]] = {}
    for gauge in gauges:
        missing = [k for k in (TABLE_LABEL, *also) if k not in gauge.labels]
        if missing:
            raise ConfigError(f"{gauge.name} has no {missing[0]} label to group it by")
        key = tuple((k, gauge.labels[k]) for k in (TABLE_LABEL, *also))
        groups.setdefault(key, []).append(gauge)
    delete_group(pushgateway_url, job)
    for key, group in groups.items():
        push(pushgateway_url, job, group, dict(key))
