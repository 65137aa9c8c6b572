"""The README's demo: the local stack, then the pipeline end to end on it."""

from __future__ import annotations

import os

from cdc_pipelines.devstack import stack
from cdc_pipelines.devstack.layout import StackLayout
from cdc_pipelines.devstack.stack import Reporter


def run_demo(report: Reporter) -> int:
    layout = StackLayout.from_env()
    statuses = stack.up(layout, report=report)
    for name, value in stack.stack_env(layout).items():
        os.environ.setdefault(name, value)
    for item in statuses:
        report(f"  {item.health.service:<12} {item.health.detail}")
    unhealthy = [s.health.service for s in statuses if not s.health.healthy]
    if unhealthy:
        report(f"demo stopped: {', '.join(unhealthy)} not healthy")
        return 3
    report("stack is up; stop it with 'cdc-pipelines stack down'")
    return 0
