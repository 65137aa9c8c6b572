"""Push gauges to the Prometheus Pushgateway in the text exposition format.

Reconciliations and sensors are batch work, so their metrics are pushed (grouped
by job and table) rather than scraped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import requests

from cdc_pipelines.errors import ConfigError, ServiceError

PUSH_TIMEOUT_S = 5.0
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


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
            if not _LABEL_NAME.match(label):
                raise ConfigError(f"label name {label!r} of {self.name} is not valid")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(gauges: Sequence[Gauge]) -> str:
    """The text exposition format of ``gauges`` (one HELP/TYPE block per metric name)."""
    lines: list[str] = []
    seen: set[str] = set()
    for gauge in sorted(gauges, key=lambda g: g.name):
        if gauge.name not in seen:
            seen.add(gauge.name)
            lines.append(f"# HELP {gauge.name} {gauge.help}")
            lines.append(f"# TYPE {gauge.name} gauge")
        labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(gauge.labels.items()))
        selector = f"{{{labels}}}" if labels else ""
        lines.append(f"{gauge.name}{selector} {_format_value(gauge.value)}")
    return "\n".join(lines) + "\n"


def push(
    pushgateway_url: str,
    job: str,
    gauges: Sequence[Gauge],
    grouping: Mapping[str, str] | None = None,
) -> None:
    """Replace the metrics of the group ``job`` (+ ``grouping`` labels) with ``gauges``."""
    path = f"/metrics/job/{quote(job, safe='')}"
    for key, value in (grouping or {}).items():
        path += f"/{quote(key, safe='')}/{quote(value, safe='')}"
    url = pushgateway_url.rstrip("/") + path
    try:
        response = requests.put(url, data=render(gauges).encode(), timeout=PUSH_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ServiceError(
            f"cannot push metrics to the Pushgateway at {pushgateway_url}: {exc}; "
            "check CDC_PUSHGATEWAY_URL and that the Pushgateway runs"
        ) from None
    if response.status_code >= 400:
        raise ServiceError(
            f"the Pushgateway at {url} refused the metrics ({response.status_code}): "
            f"{response.text.strip()[:300]}"
        )
