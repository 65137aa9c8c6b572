"""The connector-health sensor: restart failed tasks with backoff, then escalate to a human.

Statuses are read in parallel with short timeouts; restart attempts per failed task
live in the cursor (see :mod:`cdc_pipelines.defs.restart_policy`).
"""

import inspect
import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cdc_pipelines.connect.client import ConnectorStatus
from cdc_pipelines.defs.names import (
    ESCALATION_OP,
    REASON_CONNECTOR,
    TAG_REASON,
    TAG_TABLE,
    TAG_TRIGGER,
    TableNames,
    iso_utc,
)
from cdc_pipelines.defs.resources import KafkaConnectResource, PushgatewayResource
from cdc_pipelines.defs.restart_policy import Action, RestartPolicy, RestartState
from cdc_pipelines.errors import CdcPipelinesError, ConnectError
from cdc_pipelines.observability import metrics

HEALTH_INTERVAL_S = 60
CONNECT_CALL_TIMEOUT_S = 5.0
CONNECT_WORKERS = 8
TICK_BUDGET_S = 40.0
"""Restarts stop after this long into a tick (Dagster kills a tick at 60 s)."""
CURSOR_VERSION = 1
CONNECTOR_UNIT = "connector"
"""The failing unit of a connector whose own instance (not a task) failed."""
TRACE_LIMIT = 4000
DEFAULT_RESTART_POLICY = RestartPolicy()


@dataclass(frozen=True)
class _Failing:
    connector: str
    unit: str
    trace: str

    @property
    def key(self) -> str:
        return f"{self.connector}#{self.unit}"


def _failing_units(status: ConnectorStatus) -> list[_Failing]:
    units = []
    if status.state == "FAILED":
        units.append(_Failing(status.name, CONNECTOR_UNIT, status.trace or ""))
    units.extend(_Failing(status.name, str(t.task_id), t.trace or "") for t in status.failed_tasks)
    return units


def _load_failures(cursor: str | None) -> dict[str, RestartState]:
    try:
        data = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
        return {}
    failures = {}
    for key, value in (data.get("failures") or {}).items():
        state = RestartState.from_json(value)
        if state is not None:
            failures[str(key)] = state
    return failures


def _dump_failures(failures: Mapping[str, RestartState]) -> str:
    return json.dumps(
        {"v": CURSOR_VERSION, "failures": {k: failures[k].to_json() for k in sorted(failures)}},
        separators=(",", ":"),
    )


def make_connector_health_sensor(
    tables: Sequence[TableNames],
    source_connector: str | None,
    escalation_job: dg.JobDefinition,
    policy: RestartPolicy = DEFAULT_RESTART_POLICY,
    minimum_interval_seconds: int = HEALTH_INTERVAL_S,
) -> dg.SensorDefinition:
    """Restart failed connector tasks with exponential backoff, then escalate to a human.

    Every tick reads the status of each sink (and of the source connector) in parallel.
    A FAILED task or connector is restarted (``onlyFailed=true&includeTasks=true``) at
    once, then again after 30 s, 60 s, 120 s … until the retry budget is spent; the
    attempts live in the cursor. When the budget is spent and the task is still failed,
    the sensor requests one run of ``escalate_connector_failure``, which re-reads the
    status and fails with the task's stack trace: a failed run is what run-failure
    alerts page on, and its event log keeps the trace next to the connector's name.
    The sensor then stops restarting until the task runs again (a human has it).
    """
    connectors: dict[str, TableNames | None] = {n.sink: n for n in tables}
    if source_connector:
        connectors.setdefault(source_connector, None)

    @dg.sensor(
        name="connector_health",
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job=escalation_job,
        description=inspect.cleandoc(make_connector_health_sensor.__doc__ or ""),
    )
    def connector_health(
        context: dg.SensorEvaluationContext,
        kafka_connect: KafkaConnectResource,
        pushgateway: PushgatewayResource,
    ) -> dg.SensorResult:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        failures = _load_failures(context.cursor)
        statuses, unanswered = _statuses(kafka_connect, list(connectors), started)
        requests: list[dg.RunRequest] = []
        events: list[dg.AssetObservation] = []
        # Connectors not read this tick keep their restart history as it was.
        unread = unanswered | {n for n, s in statuses.items() if isinstance(s, ConnectError)}
        kept: dict[str, RestartState] = {
            k: v for k, v in failures.items() if k.rsplit("#", 1)[0] in unread
        }
        for name, status in statuses.items():
            names = connectors[name]
            if isinstance(status, ConnectError):
                events.extend(_health_observations(names, name, None, str(status), tables))
                continue
            restarted = False
            for unit in _failing_units(status):
                previous = failures.get(unit.key)
                action, state = policy.decide(previous, now_ms)
                kept[unit.key] = state
                if action is Action.RESTART and not restarted:
                    restarted = _restart(context, kafka_connect, name, state, policy, started)
                    if not restarted:
                        # Not restarted (budget spent or Connect refused): not an attempt.
                        kept[unit.key] = previous or RestartState(first_failed_ms=now_ms)
                elif action is Action.ESCALATE:
                    requests.append(_escalation_request(names, unit, state))
                    context.log.error(
                        f"{unit.connector} {unit.unit} still FAILED after {state.attempts} restarts; escalating"
                    )
            recovered = [k for k in failures if k.startswith(f"{name}#") and k not in kept]
            for key in recovered:
                context.log.info(
                    f"{key} is running again after {failures[key].attempts} restart(s)"
                )
            detail = _status_text(status)
            events.extend(_health_observations(names, name, status, detail, tables, kept))
        if unanswered:
            context.log.warning(
                f"no status within the tick budget for: {', '.join(sorted(unanswered))}"
            )
        _push_states(context, pushgateway, connectors, statuses)
        skip = None
        if not requests:
            skip = dg.SkipReason(
                f"state of {len(statuses)} of {len(connectors)} connector(s) observed; "
                f"{len(kept)} failed unit(s) remembered, none to escalate"
            )
        return dg.SensorResult(
            run_requests=requests,
            asset_events=events,
            cursor=_dump_failures(kept),
            skip_reason=skip,
        )

    return connector_health


def _statuses(
    connect: KafkaConnectResource, names: Sequence[str], started: float
) -> tuple[dict[str, ConnectorStatus | ConnectError], set[str]]:
    """Status of each connector, fetched in parallel; names still unanswered at the budget."""

    def fetch(name: str) -> ConnectorStatus | ConnectError:
        try:
            return connect.client(timeout_s=CONNECT_CALL_TIMEOUT_S, retries=0).status(name)
        except ConnectError as exc:
            return exc

    results: dict[str, ConnectorStatus | ConnectError] = {}
    pool = ThreadPoolExecutor(max_workers=CONNECT_WORKERS)
    futures = {pool.submit(fetch, name): name for name in names}
    done, _ = wait(futures, timeout=max(0.1, TICK_BUDGET_S / 2 - (time.monotonic() - started)))
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        results[futures[future]] = future.result()
    return results, set(names) - set(results)


def _restart(
    context: dg.SensorEvaluationContext,
    connect: KafkaConnectResource,
    name: str,
    state: RestartState,
    policy: RestartPolicy,
    started: float,
) -> bool:
    if time.monotonic() - started > TICK_BUDGET_S:
        context.log.warning(f"restart of {name} deferred: the tick's time budget is spent")
        return False
    try:
        connect.client(timeout_s=CONNECT_CALL_TIMEOUT_S, retries=0).restart(
            name, only_failed=True, include_tasks=True
        )
    except ConnectError as exc:
        context.log.warning(f"restart {state.attempts}/{policy.budget} of {name} failed: {exc}")
        return False
    context.log.info(
        f"restarted the failed tasks of {name} (attempt {state.attempts}/{policy.budget}; "
        f"next no sooner than {iso_utc(state.next_attempt_ms)})"
    )
    return True


def _escalation_request(
    names: TableNames | None, unit: _Failing, state: RestartState
) -> dg.RunRequest:
    table = names.source if names else ""
    return dg.RunRequest(
        run_key=f"connector-escalation:{unit.connector}:{unit.unit}:{state.first_failed_ms}",
        run_config={
            "ops": {
                ESCALATION_OP: {
                    "config": {
                        "connector": unit.connector,
                        "unit": unit.unit,
                        "table": table,
                        "attempts": state.attempts,
                        "first_failed_ms": state.first_failed_ms,
                        "trace": unit.trace[:TRACE_LIMIT],
                    }
                }
            }
        },
        tags={
            TAG_TABLE: table or "(source)",
            TAG_REASON: REASON_CONNECTOR,
            "cdc/connector": unit.connector,
            TAG_TRIGGER: f"{unit.unit} failed since {iso_utc(state.first_failed_ms)}",
        },
    )


def _push_states(
    context: dg.SensorEvaluationContext,
    pushgateway: PushgatewayResource,
    connectors: Mapping[str, TableNames | None],
    statuses: Mapping[str, ConnectorStatus | ConnectError],
) -> None:
    """One group per connector read this tick: each task's FAILED flag and the running count.

    A connector whose status could not be read keeps its last pushed values.
    """
    for name, status in sorted(statuses.items()):
        if isinstance(status, ConnectError):
            continue
        names = connectors[name]
        labels = {"connector": name, "table": names.source if names else ""}
        gauges = [
            metrics.CONNECTOR_TASK_FAILED(
                status.state == "FAILED", {**labels, "task": CONNECTOR_UNIT}
            ),
            metrics.CONNECTOR_TASKS_RUNNING(
                sum(t.state == "RUNNING" for t in status.tasks), labels
            ),
        ]
        gauges.extend(
            metrics.CONNECTOR_TASK_FAILED(t.state == "FAILED", {**labels, "task": str(t.task_id)})
            for t in status.tasks
        )
        try:
            pushgateway.push(metrics.CONNECTOR_JOB, gauges, grouping={"connector": name})
        except CdcPipelinesError as exc:
            context.log.warning(f"connector metrics not pushed: {exc}")
            return


def _status_text(status: ConnectorStatus) -> str:
    tasks = ", ".join(f"{t.task_id}:{t.state}" for t in status.tasks) or "no tasks"
    return f"{status.state} ({tasks})"


def _health_observations(
    names: TableNames | None,
    connector: str,
    status: ConnectorStatus | None,
    detail: str,
    tables: Sequence[TableNames],
    failures: Mapping[str, RestartState] | None = None,
) -> list[dg.AssetObservation]:
    restarts = {
        k.rsplit("#", 1)[1]: v for k, v in (failures or {}).items() if k.startswith(f"{connector}#")
    }
    metadata: dict[str, Any] = {
        "observed_by": "connector_health_sensor",
        "connector": connector,
        "connector_state": status.state if status else "UNREACHABLE_OR_MISSING",
        "connector_detail": detail,
    }
    if status is not None:
        metadata["tasks_running"] = sum(t.state == "RUNNING" for t in status.tasks)
        metadata["tasks_failed"] = len(status.failed_tasks)
    if restarts:
        metadata["restarts"] = dg.MetadataValue.json(
            {
                unit: {"attempts": s.attempts, "escalated": s.escalated}
                for unit, s in restarts.items()
            }
        )
    if names is not None:
        return [dg.AssetObservation(asset_key=names.postgres_key, metadata=metadata)]
    # The source connector feeds every table's topic.
    return [dg.AssetObservation(asset_key=n.kafka_key, metadata=metadata) for n in tables]
