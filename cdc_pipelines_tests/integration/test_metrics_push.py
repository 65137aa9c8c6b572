"""Metrics pushed through prometheus_client to the devstack's real Pushgateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cdc_pipelines.errors import ConfigError, ServiceError
from cdc_pipelines.observability import metrics
from cdc_pipelines.observability.metrics import Gauge, delete_group, push, push_per_table


def samples(pushgateway_url: str, job: str) -> dict[tuple[str, str], float]:
    """(metric, table) -> value of every sample the Pushgateway holds for ``job``."""
    text = requests.get(f"{pushgateway_url}/metrics", timeout=10).text
    return {
        (s.name, s.labels.get("table", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("job") == job and not s.name.startswith("push_")
    }


@pytest.fixture
def job(pushgateway_url: str, unique_name: str) -> Iterator[str]:
    yield unique_name
    for grouping in (
        {},
        {"table": "a.one"},
        {"table": "a.two"},
        {"table": "", "dlq_topic": "cdc/dlq"},
    ):
        delete_group(pushgateway_url, unique_name, grouping)


def test_one_group_per_table_replaces_only_that_table(pushgateway_url, job):
    labels = {"consumer_group": "g"}
    push_per_table(
        pushgateway_url,
        job,
        [
            metrics.CONSUMER_LAG_MESSAGES(5, {**labels, "table": "a.one"}),
            metrics.CONSUMER_LAG_MESSAGES(7, {**labels, "table": "a.two"}),
            metrics.CONSUMER_LAG_SECONDS(1.5, {**labels, "table": "a.two"}),
        ],
    )
    push_per_table(
        pushgateway_url, job, [metrics.CONSUMER_LAG_MESSAGES(0, {**labels, "table": "a.one"})]
    )
    assert samples(pushgateway_url, job) == {
        ("cdc_consumer_lag_messages", "a.one"): 0,
        ("cdc_consumer_lag_messages", "a.two"): 7,
        ("cdc_consumer_lag_seconds", "a.two"): 1.5,
    }


def test_the_group_earlier_versions_pushed_without_a_table_does_not_block_the_push(
    pushgateway_url, job
):
    old = metrics.CONSUMER_LAG_MESSAGES(3, {"table": "a.one", "consumer_group": "g"})
    push(pushgateway_url, job, [old])
    # The same series in a second group is refused by the Pushgateway ...
    with pytest.raises(ServiceError, match="refused the metrics"):
        push(pushgateway_url, job, [old], {"table": "a.one"})
    # ... so a push per table deletes the job's table-less group first.
    push_per_table(pushgateway_url, job, [old])
    assert samples(pushgateway_url, job) == {("cdc_consumer_lag_messages", "a.one"): 3}


def test_an_empty_table_and_a_slash_survive_the_grouping_key(pushgateway_url, job):
    shared = metrics.DLQ_END_OFFSET(2, {"table": "", "dlq_topic": "cdc/dlq"})
    push_per_table(pushgateway_url, job, [shared], also=("dlq_topic",))
    assert samples(pushgateway_url, job) == {("cdc_dlq_end_offset", ""): 2}


def test_a_push_the_pushgateway_cannot_take_says_why(pushgateway_url, job):
    with pytest.raises(ServiceError, match="CDC_PUSHGATEWAY_URL"):
        push("http://127.0.0.1:1", job, [Gauge("cdc_x", 1, "x")])
    with pytest.raises(ConfigError, match="same label names"):
        push(
            pushgateway_url,
            job,
            [Gauge("cdc_x", 1, "x", {"table": "a"}), Gauge("cdc_x", 2, "x", {"slice": "1"})],
        )
    with pytest.raises(ConfigError, match="no table label"):
        push_per_table(pushgateway_url, job, [Gauge("cdc_x", 1, "x")])
