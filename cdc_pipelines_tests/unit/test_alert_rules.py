"""The alerting rules in docker/prometheus/rules: valid, unit-tested and about real metrics.

``promtool`` (Debian's prometheus package, installed by ``bash .ci/setup``) checks the
rules and runs their unit tests (``docker/prometheus/rules/tests/*.test.yml``); without it
these tests fail, they do not skip. The rules may name only metrics cdc_pipelines pushes
(``cdc_pipelines.observability.metrics.METRICS``), every alert has a firing and a quiet
case, and a runbook entry in docs/operations.md under its own name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc_pipelines.observability.metrics import METRICS

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "docker" / "prometheus"
RULES_DIR = PROMETHEUS / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((REPO / "docker" / "grafana" / "dashboards").glob("*.json"))
RUNBOOK = REPO / "docs" / "operations.md"
PROMTOOL_TIMEOUT_S = 60
# Metric names: a cdc_ identifier not followed by "(" (a function) or a label of by/on (...).
PUSHED_NAME = re.compile(r"\bcdc_[a-zA-Z0-9_:]+\b")
QUOTED = re.compile(r'"[^"]*"')
"""A label value (a job's name, say) is no metric name."""


def metric_names(expr: str) -> set[str]:
    return set(PUSHED_NAME.findall(QUOTED.sub('""', expr)))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not installed (Debian package prometheus=2.42.0+ds-5+deb12u1); "
            "run `bash .ci/setup`"
        )
    return found


def run_promtool(*args: str) -> None:
    result = subprocess.run(
        [promtool(), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"promtool {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def test_there_are_rules_and_unit_tests() -> None:
    assert RULE_FILES, f"no *.rules.yml in {RULES_DIR}"
    assert TEST_FILES, f"no *.test.yml in {RULES_DIR / 'tests'}"


def test_promtool_checks_the_rules() -> None:
    run_promtool("check", "rules", *(str(p.relative_to(REPO)) for p in RULE_FILES))


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    run_promtool("test", "rules", *(str(p.relative_to(REPO)) for p in TEST_FILES))


def test_promtool_checks_the_prometheus_config() -> None:
    run_promtool("check", "config", str((PROMETHEUS / "prometheus.yml").relative_to(REPO)))


def test_prometheus_loads_the_rule_files_from_where_compose_mounts_them() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    mounts = dict(
        volume.rsplit(":", 1)[0].split(":", 1)
        for volume in compose["services"]["prometheus"]["volumes"]
        if volume.startswith("./")
    )
    target = mounts.get("./prometheus/rules")
    assert target, "docker/compose.yaml does not mount ./prometheus/rules into prometheus"
    patterns = config.get("rule_files") or []
    for path in RULE_FILES:
        inside = f"{target}/{path.name}"
        assert any(Path(inside).match(p) for p in patterns), f"{inside} matches no rule_files"


def test_the_rules_name_only_metrics_cdc_pipelines_pushes() -> None:
    pushed = {metric.name for metric in METRICS}
    jobs = {metric.job for metric in METRICS}
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        named = metric_names(rule["expr"])
        if "push_time_seconds" in rule["expr"]:
            # The Pushgateway's own time of a push: its job matcher names cdc_pipelines' jobs.
            matched = set(PUSHED_NAME.findall("".join(QUOTED.findall(rule["expr"]))))
            assert matched and matched <= jobs, f"{name} watches {sorted(matched - jobs)}"
            continue
        assert named, f"{name} reads no cdc_ metric"
        assert named <= pushed, (
            f"{rule.get('alert') or rule.get('record')} reads {sorted(named - pushed)}, "
            "which cdc_pipelines does not push (metrics.METRICS)"
        )


def test_the_dashboards_show_only_metrics_cdc_pipelines_pushes() -> None:
    pushed = {metric.name for metric in METRICS}
    for path in DASHBOARDS:
        shown = set(PUSHED_NAME.findall(path.read_text()))
        assert shown <= pushed, f"{path.name} shows {sorted(shown - pushed)}, which nothing pushes"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test") or []:
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names, "no alerting rules"
    assert names <= firing, f"no firing case for {sorted(names - firing)}"
    assert names <= quiet, f"no quiet case for {sorted(names - quiet)}"


def test_every_alert_points_at_its_runbook_entry() -> None:
    headings = {
        line.removeprefix("### ").strip()
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    for name, rule in alerts().items():
        assert name in headings, f"docs/operations.md has no '### {name}' entry"
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
