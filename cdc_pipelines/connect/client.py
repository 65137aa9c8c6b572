"""Kafka Connect REST client: plugins, validation, idempotent apply, status, restarts, offsets.

Every call has a timeout and retries connection failures, 5xx answers and 409
(a rebalance in progress) with exponential backoff. Failures raise
:class:`~cdc_pipelines.errors.ConnectError` naming the endpoint and the fix.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote

import requests

from cdc_pipelines.errors import ConnectError, redact_secrets

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 0.5
RETRY_STATUSES = frozenset({409, 500, 502, 503, 504})
# Config keys whose values are secrets: any password, secret, token, credential or salt (which
# covers ssl.*.password and *.key.password), a JAAS login (it embeds the password) and the
# schema registry's user:password.
SECRET_KEY_WORDS = (
    "password",
    "secret",
    "token",
    "credential",
    "salt",
    "jaas.config",
    "user.info",
)
# A whole config-provider reference (${file:…}, ${vault:…}) names a secret without holding it.
_PROVIDER_REFERENCE = re.compile(r"^\$\{[^{}]*\}$")
HIDDEN = "(hidden)"


class ConnectorDefinition(Protocol):
    """What the client needs of a desired connector: its name and string config."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class ConfigProblem:
    """One key the plugin's validator rejected."""

    key: str
    errors: tuple[str, ...]


@dataclass(frozen=True)
class TaskStatus:
    task_id: int
    state: str
    worker_id: str
    trace: str | None = None


@dataclass(frozen=True)
class ConnectorStatus:
    name: str
    state: str
    worker_id: str
    tasks: tuple[TaskStatus, ...]
    connector_type: str | None = None
    trace: str | None = None

    @property
    def failed_tasks(self) -> tuple[TaskStatus, ...]:
        return tuple(t for t in self.tasks if t.state == "FAILED")

    @property
    def healthy(self) -> bool:
        return self.state == "RUNNING" and all(t.state == "RUNNING" for t in self.tasks)


ChangeKind = Literal["create", "update", "unchanged"]


@dataclass(frozen=True)
class KeyChange:
    key: str
    current: str | None
    desired: str | None


@dataclass(frozen=True)
class ConnectorChange:
    """The difference between a desired connector config and what Connect runs."""

    name: str
    kind: ChangeKind
    keys: tuple[KeyChange, ...] = ()

    def describe(self) -> str:
        if self.kind == "unchanged":
            return f"{self.name}: unchanged"
        if self.kind == "create":
            return f"{self.name}: create ({len(self.keys)} keys)"
        lines = [f"{self.name}: update"]
        for change in self.keys:
            lines.append(
                f"  {change.key}: {_shown(change.key, change.current)} → {_shown(change.key, change.desired)}"
            )
        return "\n".join(lines)


def is_secret_key(key: str) -> bool:
    """Whether a connector config key holds a secret (``connection.password``,
    ``sasl.jaas.config``, ``ssl.keystore.password``, ``basic.auth.user.info``…)."""
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def shown_config_value(key: str, value: str) -> str:
    """``value`` as it may be printed: a secret key's literal value hidden (a provider
    reference is kept), the password of any URL's user info (``scheme://user:pass@host``)
    or ``password=`` parameter masked in every other value."""
    if is_secret_key(key) and not _PROVIDER_REFERENCE.match(value.strip()):
        return HIDDEN
    return redact_secrets(value)


def _shown(key: str, value: str | None) -> str:
    if value is None:
        return "(absent)"
    shown = shown_config_value(key, value)
    return shown if shown == HIDDEN else repr(shown)


def diff_config(
    name: str, current: Mapping[str, str] | None, desired: Mapping[str, str]
) -> ConnectorChange:
    """Compare configs key by key; Connect adds ``name`` to stored configs, so it is ignored."""
    if current is None:
        return ConnectorChange(
            name, "create", tuple(KeyChange(k, None, v) for k, v in sorted(desired.items()))
        )
    keys = (set(current) | set(desired)) - {"name"}
    changes = tuple(
        KeyChange(k, current.get(k), desired.get(k))
        for k in sorted(keys)
        if current.get(k) != desired.get(k)
    )
    return ConnectorChange(name, "update" if changes else "unchanged", changes)


@dataclass
class ConnectClient:
    """A client of one Connect cluster's REST API."""

    base_url: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def _request(
        self, method: str, path: str, json: Any = None, expect: Sequence[int] = (200,)
    ) -> requests.Response:
        url = self.base_url.rstrip("/") + path
        delay = self.backoff_s
        last_problem = ""
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, json=json, timeout=self.timeout_s)
            except requests.RequestException as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in expect:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise ConnectError(
                        f"{method} {url} answered {response.status_code}: {_message(response)}"
                    )
                last_problem = f"{response.status_code}: {_message(response)}"
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise ConnectError(
            f"Kafka Connect at {self.base_url} did not answer {method} {path} after "
            f"{self.retries + 1} attempts ({last_problem}); check that the worker runs and "
            "CDC_CONNECT_URL points at it"
        )

    # --- plugins and validation -------------------------------------------------
    def plugins(self) -> list[str]:
        return [p["class"] for p in self._request("GET", "/connector-plugins").json()]

    def validate(self, config: Mapping[str, str], name: str = "validation") -> list[ConfigProblem]:
        """Problems the plugin reports for ``config`` as connector ``name`` (empty when valid)."""
        connector_class = config.get("connector.class")
        if not connector_class:
            return [ConfigProblem("connector.class", ("missing",))]
        plugin = connector_class.rsplit(".", 1)[-1]
        body = self._request(
            "PUT",
            f"/connector-plugins/{quote(plugin, safe='')}/config/validate",
            json={**config, "name": name},
        ).json()
        problems = []
        for item in body.get("configs", []):
            value = item.get("value", {})
            errors = tuple(value.get("errors") or ())
            if errors:
                problems.append(ConfigProblem(value.get("name", "?"), errors))
        return problems

    # --- connectors -------------------------------------------------------------
    def connectors(self) -> list[str]:
        return sorted(self._request("GET", "/connectors").json())

    def current_config(self, name: str) -> dict[str, str] | None:
        response = self._request("GET", f"/connectors/{_n(name)}/config", expect=(200, 404))
        return None if response.status_code == 404 else dict(response.json())

    def plan(self, desired: Sequence[ConnectorDefinition]) -> list[ConnectorChange]:
        return [diff_config(d.name, self.current_config(d.name), d.config) for d in desired]

    def apply(
        self, desired: Sequence[ConnectorDefinition], validate: bool = True
    ) -> list[ConnectorChange]:
        """Create or update connectors whose config differs; PUT nothing otherwise.

        With ``validate``, every changed config is validated first and nothing is
        applied when any is invalid.
        """
        changes = self.plan(desired)
        to_apply = [(d, c) for d, c in zip(desired, changes, strict=True) if c.kind != "unchanged"]
        if validate:
            report = []
            for definition, _ in to_apply:
                for problem in self.validate(definition.config, definition.name):
                    report.append(
                        f"  {definition.name}: {problem.key}: {'; '.join(problem.errors)}"
                    )
            if report:
                raise ConnectError(
                    "connector configs are invalid, nothing was applied:\n" + "\n".join(report)
                )
        for definition, _ in to_apply:
            self._request(
                "PUT",
                f"/connectors/{_n(definition.name)}/config",
                json=dict(definition.config),
                expect=(200, 201),
            )
        return changes

    def status(self, name: str) -> ConnectorStatus:
        status = self.status_if_exists(name)
        if status is None:
            raise ConnectError(
                f"connector {name!r} does not exist in {self.base_url}; "
                "run 'cdc-pipelines connectors apply'"
            )
        return status

    def status_if_exists(self, name: str) -> ConnectorStatus | None:
        body = self._request("GET", f"/connectors/{_n(name)}/status", expect=(200, 404))
        if body.status_code == 404:
            return None
        data = body.json()
        tasks = tuple(
            TaskStatus(t["id"], t["state"], t.get("worker_id", ""), t.get("trace"))
            for t in data.get("tasks", [])
        )
        connector = data.get("connector", {})
        return ConnectorStatus(
            name=name,
            state=connector.get("state", "UNKNOWN"),
            worker_id=connector.get("worker_id", ""),
            tasks=tasks,
            connector_type=data.get("type"),
            trace=connector.get("trace"),
        )

    def restart(self, name: str, only_failed: bool = True, include_tasks: bool = True) -> None:
        query = f"includeTasks={str(include_tasks).lower()}&onlyFailed={str(only_failed).lower()}"
        self._request("POST", f"/connectors/{_n(name)}/restart?{query}", expect=(200, 202, 204))

    def pause(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_n(name)}/pause", expect=(202,))

    def resume(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_n(name)}/resume", expect=(202,))

    def stop(self, name: str) -> None:
        self._request("PUT", f"/connectors/{_n(name)}/stop", expect=(202, 204))

    def delete(self, name: str) -> None:
        self._request("DELETE", f"/connectors/{_n(name)}", expect=(204, 404))

    def offsets(self, name: str) -> list[dict[str, Any]]:
        """The connector's committed offsets (KIP-875): ``[{partition: …, offset: …}, …]``."""
        return list(
            self._request("GET", f"/connectors/{_n(name)}/offsets").json().get("offsets", [])
        )

    def wait_for_state(self, name: str, state: str, timeout_s: float = 60.0) -> ConnectorStatus:
        """Poll until the connector and all its tasks report ``state``."""
        deadline = time.monotonic() + timeout_s
        status = self.status_if_exists(name)
        while time.monotonic() < deadline:
            if (
                status is not None
                and status.state == state
                and status.tasks
                and all(t.state == state for t in status.tasks)
            ):
                return status
            time.sleep(0.5)
            status = self.status_if_exists(name)
        seen = (
            f"connector {status.state}, tasks {[t.state for t in status.tasks]}"
            if status
            else "connector not created"
        )
        raise ConnectError(
            f"connector {name!r} did not reach {state} within {timeout_s:.0f}s ({seen})"
        )

    def wait_for_state_connector_only(
        self, name: str, state: str, timeout_s: float = 60.0
    ) -> ConnectorStatus:
        """Poll until the connector itself reports ``state`` (a stopped connector has no tasks)."""
        deadline = time.monotonic() + timeout_s
        status = self.status_if_exists(name)
        while time.monotonic() < deadline:
            if status is not None and status.state == state:
                return status
            time.sleep(0.5)
            status = self.status_if_exists(name)
        raise ConnectError(
            f"connector {name!r} did not reach {state} within {timeout_s:.0f}s "
            f"({status.state if status else 'not created'})"
        )


def _n(name: str) -> str:
    return quote(name, safe="")


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", response.text))[:500]
    except ValueError:
        return response.text[:500]
