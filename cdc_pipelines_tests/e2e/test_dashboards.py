"""After the demo, Prometheus answers every query the alerting rules and dashboards make.

The demo runs once for the module (it pushes through the same code paths as the daemon's
sensors and runs: reconciliation, one canary probe, one tick of each metric-pushing
sensor). Then, against the local stack's Prometheus (``CDC_PROMETHEUS_URL``, scraping
the Pushgateway every 5 s): every metric named by a rule expression or a dashboard
query has at least one series, and every dashboard query, with its Grafana variables
filled in, evaluates without error to a non-empty result, so no panel says "No data".
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "docker" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((REPO / "docker" / "grafana" / "dashboards").glob("*.json"))
DEMO_TIMEOUT_S = 600
ANSWER_DEADLINE_S = 60.0
"""Prometheus scrapes the Pushgateway every 5 s; the demo's last pushes need a scrape or two."""

# PromQL words that look like metric names: operators, modifiers and keywords.
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_BUILTIN_VARIABLE = re.compile(r"\$\{?__\w+\}?")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    return {n for n in _NAME.findall(text) if n.lower() not in PROMQL_WORDS}


def filled(expr: str) -> str:
    """A dashboard expression as Grafana sends it with "All" chosen: ``$table`` → ``.*``,
    ``$__rate_interval`` and the other built-in intervals → ``1m``."""
    return _VARIABLE.sub(".*", _BUILTIN_VARIABLE.sub("1m", expr))


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str) and value.strip():
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard file, PromQL) of every panel target."""
    return [
        (path.name, expr) for path in DASHBOARDS for expr in _exprs(json.loads(path.read_text()))
    ]


def variable_queries() -> list[tuple[str, str]]:
    """(dashboard file, the metric selector of a ``label_values(…)`` template variable)."""
    found = []
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text()).get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = _LABEL_VALUES.match(text or "")
            if match:
                found.append((path.name, match.group(1)))
    return found


def rule_exprs() -> list[str]:
    return [
        str(rule["expr"])
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def used_metrics() -> dict[str, list[str]]:
    """Every metric name the rules and dashboards use, with where each is used."""
    used: dict[str, list[str]] = {}
    for expr in rule_exprs():
        for name in metric_names(expr):
            used.setdefault(name, []).append("rules")
    for dashboard, expr in [*dashboard_queries(), *variable_queries()]:
        for name in metric_names(filled(expr)):
            used.setdefault(name, []).append(dashboard)
    return used


def test_the_extraction_finds_the_names_and_skips_the_rest() -> None:
    assert metric_names(
        'max by (table, consumer_group) (cdc_a{table=~"x"} > on (table) 0.5 * cdc_b) '
        "or max by (t) (delta(cdc_c[15m])) > 0 and time() - cdc_d"
    ) == {"cdc_a", "cdc_b", "cdc_c", "cdc_d"}
    assert filled('rate(x{table=~"$table", t="${table}"}[$__rate_interval])') == (
        'rate(x{table=~".*", t=".*"}[1m])'
    )
    used = used_metrics()
    assert {"cdc_canary_last_success_timestamp_seconds", "cdc_consumer_lag_messages"} <= set(used)


@pytest.fixture(scope="module")
def prometheus_after_demo(settings) -> str:
    """Run the demo once; Prometheus's URL (``CDC_PROMETHEUS_URL`` of ``stack env``)."""
    url = os.environ.get("CDC_PROMETHEUS_URL")
    if not url:
        pytest.fail("CDC_PROMETHEUS_URL is not set; run 'cdc-pipelines stack up'")
    result = subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "canary: the canary written to demo.cdc_canary" in result.stderr, result.stderr[-3000:]
    return url


def query(prometheus_url: str, promql: str) -> dict[str, Any]:
    """The query API's answer (``status``, ``data`` or ``error``), whatever the status code."""
    response = requests.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    return dict(response.json())


def answers(prometheus_url: str, queries: list[str]) -> dict[str, dict[str, Any]]:
    """Each query's last answer, retried until all have a non-empty result or the deadline."""
    last: dict[str, dict[str, Any]] = {}
    pending = list(queries)
    deadline = time.monotonic() + ANSWER_DEADLINE_S
    while pending:
        for promql in list(pending):
            last[promql] = query(prometheus_url, promql)
            if last[promql].get("status") == "success" and last[promql]["data"]["result"]:
                pending.remove(promql)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    return last


def test_every_metric_of_the_rules_and_dashboards_has_a_series(prometheus_after_demo):
    used = used_metrics()
    found = answers(prometheus_after_demo, sorted(used))
    empty = {
        name: sorted(set(used[name]))
        for name, answer in found.items()
        if answer.get("status") != "success" or not answer["data"]["result"]
    }
    assert not empty, f"no series after the demo within {ANSWER_DEADLINE_S:.0f}s: {empty}"


def test_every_dashboard_query_answers(prometheus_after_demo):
    queries = {filled(expr): dashboard for dashboard, expr in dashboard_queries()}
    assert queries, f"no queries in {[d.name for d in DASHBOARDS]}"
    found = answers(prometheus_after_demo, sorted(queries))
    failing = {
        f"{queries[promql]}: {promql}": answer.get("error") or "empty result"
        for promql, answer in found.items()
        if answer.get("status") != "success" or not answer["data"]["result"]
    }
    assert not failing, f"dashboard queries without an answer: {failing}"
