"""The local stack's Prometheus scrapes the Pushgateway: a pushed metric can be queried."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

from cdc_pipelines.settings import ConnectionSettings

# Scrapes are 5 s apart; a few of them, and Prometheus's own start, fit in this.
QUERY_DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def prometheus_url(settings: ConnectionSettings) -> str:
    url = os.environ.get("CDC_PROMETHEUS_URL")
    if not url:
        pytest.fail("CDC_PROMETHEUS_URL is not set; run 'cdc-pipelines stack up'")
    try:
        requests.get(f"{url}/-/ready", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"Prometheus at CDC_PROMETHEUS_URL is not ready ({exc})")
    return url


def test_a_pushed_metric_is_queried_back_through_prometheus(
    prometheus_url, pushgateway_url, unique_name
):
    value = float(uuid.uuid4().int % 10_000)
    body = f'# TYPE cdc_smoke_scraped gauge\ncdc_smoke_scraped{{table="shop.orders"}} {value}\n'
    group = f"{pushgateway_url}/metrics/job/{unique_name}"
    requests.put(group, data=body, timeout=10).raise_for_status()
    try:
        query = f'cdc_smoke_scraped{{job="{unique_name}"}}'
        deadline = time.monotonic() + QUERY_DEADLINE_S
        result: list[dict] = []
        while time.monotonic() < deadline:
            answer = requests.get(
                f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=10
            ).json()
            assert answer["status"] == "success", answer
            result = answer["data"]["result"]
            if result:
                break
            time.sleep(1)
        assert len(result) == 1, f"{query} not scraped within {QUERY_DEADLINE_S:.0f}s"
        # honor_labels keeps the pushed job and table instead of the scrape's own.
        assert result[0]["metric"]["job"] == unique_name
        assert result[0]["metric"]["table"] == "shop.orders"
        assert float(result[0]["value"][1]) == value
    finally:
        requests.delete(group, timeout=10)
