"""Regenerate the pictures of the Dagster UI in ``docs/ui/`` with headless Chromium.

Starts ``dagster-webserver`` (the UI of ``dagster dev``, without its daemon, so taking
pictures never ticks a sensor or launches a run) on a free port against a DAGSTER_HOME —
the repository's ``dagster_home/`` by default, which is where ``cdc-pipelines demo``
leaves its runs — then drives Debian's Chromium over the DevTools protocol: open a page,
wait until it shows what it is about, click where a person would, capture a PNG.

    .venv/bin/cdc-pipelines demo
    .venv/bin/python -m cdc_pipelines_tests.tooling.ui_screenshots
    .venv/bin/python -m cdc_pipelines_tests.tooling.ui_screenshots --dagster-home DIR --out DIR

Pictures of one table (the first declared, or ``--table ks.t``):

- ``lineage.png``: the table's asset group, source → topic → PostgreSQL → index →
  reconciliation → repair;
- ``health-checks.png``: the PostgreSQL asset's checks, the discrepancy check's latest
  result and its numbers plotted over time;
- ``health-observations.png``: the PostgreSQL asset's latest health observation, plotted;
- ``partitions.png``: the reconciliation's partitions (token slices), one of them opened;
- ``backfills.png``: the backfills of the reconciliation.

Connection settings not in the environment come from the local stack
(``cdc-pipelines stack env``), as the demo takes them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CODE_LOCATION = "cdc_pipelines"
WIDTH, HEIGHT = 1600, 1000
START_TIMEOUT_S = 180.0
PAGE_TIMEOUT_S = 60.0
SETTLE_S = 1.5
"""After a page shows what is waited for: charts and counts finish drawing."""
POLL_S = 0.25
GRAPHQL_TIMEOUT_S = 30.0
STOP_GRACE_S = 20.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class ScreenshotError(RuntimeError):
    """The UI, the browser or a page did not do what a picture needs."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the webserver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Webserver:
    """A running ``dagster-webserver`` and its GraphQL endpoint."""

    url: str
    log: Path

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": dict(variables or {})},
            timeout=GRAPHQL_TIMEOUT_S,
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise ScreenshotError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])


LOCATIONS = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name "
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


@contextlib.contextmanager
def webserver(
    dagster_home: Path, env: Mapping[str, str], log: Path, workspace: Path = REPO / "workspace.yaml"
) -> Iterator[Webserver]:
    """``dagster-webserver`` on a free port in its own session, stopped with everything it
    started when the block ends; yields once the code location has loaded."""
    port = free_port()
    environ = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(dagster_home),
        "VIRTUAL_ENV": str(VENV_BIN.parent),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(VENV_BIN / "dagster-webserver"),
        *("-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Webserver(f"http://127.0.0.1:{port}", log)
    try:
        wait_until_loaded(server, process)
        yield server
    finally:
        stop(process)


def wait_until_loaded(server: Webserver, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    problem = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ScreenshotError(
                f"the webserver exited with {process.returncode}:\n{tail(server.log)}"
            )
        try:
            entries = server.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
        except (requests.RequestException, ScreenshotError) as exc:
            problem = str(exc)
        else:
            states = {
                e["name"]: e["locationOrLoadError"] and e["locationOrLoadError"]["__typename"]
                for e in entries
            }
            errors = [e for e in entries if states[e["name"]] == "PythonError"]
            if errors:
                raise ScreenshotError(
                    f"the code location failed to load: "
                    f"{errors[0]['locationOrLoadError']['message']}"
                )
            if states.get(CODE_LOCATION) == "RepositoryLocation":
                return
            problem = f"locations: {states}"
        time.sleep(POLL_S * 4)
    raise ScreenshotError(
        f"the webserver did not load {CODE_LOCATION} in {START_TIMEOUT_S:.0f}s ({problem}):\n"
        f"{tail(server.log)}"
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session and whatever it started."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# --- the browser ------------------------------------------------------------------------------


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page, one websocket)."""

    def __init__(self, profile: Path, width: int = WIDTH, height: int = HEIGHT) -> None:
        if not CHROMIUM.exists():
            raise ScreenshotError(f"{CHROMIUM} is missing; 'bash .ci/setup' installs it")
        self.profile, self.width, self.height = profile, width, height
        self._next_id = 0
        self._process = subprocess.Popen(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self._socket = connect(self._page_socket(), max_size=None, open_timeout=30)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.resize(width, height)
        except BaseException:
            stop(self._process)
            raise

    def _page_socket(self) -> str:
        """The DevTools websocket of the browser's page (Chromium writes its port to a file)."""
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ScreenshotError(f"chromium exited with {self._process.returncode}")
            if marker.exists() and marker.read_text().strip():
                port = int(marker.read_text().split()[0])
                targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(POLL_S)
        raise ScreenshotError(f"chromium opened no DevTools port in {PAGE_TIMEOUT_S:.0f}s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._socket.close()
        stop(self._process)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Call a DevTools method and return its result (events on the way are dropped)."""
        self._next_id += 1
        call = self._next_id
        self._socket.send(json.dumps({"id": call, "method": method, "params": dict(params or {})}))
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while True:
            message = json.loads(self._socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") != call:
                continue
            if "error" in message:
                raise ScreenshotError(f"{method}: {message['error']}")
            return dict(message.get("result", {}))

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise ScreenshotError(f"{expression[:80]}…: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def open(self, url: str, shows: Sequence[str]) -> None:
        """Navigate and wait until the page's text shows every one of ``shows``."""
        self.send("Page.navigate", {"url": url})
        self.wait_for_text(shows, url)

    def wait_for_text(self, shows: Sequence[str], where: str = "the page") -> None:
        check = " && ".join(f"document.body.innerText.includes({json.dumps(s)})" for s in shows)
        self.wait_until(f"!!document.body && {check}", f"{where} to show {list(shows)}")

    def wait_until(self, condition: str, what: str, timeout_s: float = PAGE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.evaluate(condition):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 600) : ''")
                raise ScreenshotError(f"timed out waiting for {what}; the page shows: {text!r}")
            time.sleep(POLL_S)
        time.sleep(SETTLE_S)

    def click_text(self, text: str, exact: bool = True) -> None:
        """Click the innermost element whose text is ``text`` (or starts with it)."""
        clicked = self.evaluate(
            f"""(() => {{
              const wanted = {json.dumps(text)}, exact = {json.dumps(exact)};
              const reads = e => {{
                const t = (e.innerText || '').trim();
                return exact ? t === wanted : t.startsWith(wanted);
              }};
              const hit = [...document.querySelectorAll('body *')]
                .find(e => reads(e) && ![...e.children].some(reads));
              if (!hit) return false;
              hit.scrollIntoView({{block: 'center'}});
              hit.click();
              return true;
            }})()"""
        )
        if not clicked:
            raise ScreenshotError(f"nothing to click that reads {text!r}")

    def scroll_to_text(self, text: str) -> None:
        """Scroll the innermost element reading ``text`` to the top of its scroll container."""
        self.evaluate(
            f"""(() => {{
              const wanted = {json.dumps(text)};
              const hit = [...document.querySelectorAll('body *')].find(e =>
                (e.innerText || '').trim() === wanted && !e.children.length);
              if (hit) hit.scrollIntoView({{block: 'start'}});
            }})()"""
        )
        time.sleep(SETTLE_S)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


# --- the pictures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """The keys of one declared table, as the UI's addresses spell them."""

    keyspace: str
    table: str
    target_table: str

    @property
    def group(self) -> str:
        return f"{self.keyspace}__{self.table}"

    def asset(self, name: str) -> str:
        return f"/assets/{self.keyspace}/{self.table}/{name}"


def declared_table(config_path: Path | None, wanted: str | None) -> Table:
    from cdc_pipelines.config import load_config

    config = load_config(config_path)
    specs = [t for t in config.tables if wanted in (None, t.source)]
    if not specs:
        raise ScreenshotError(f"{wanted!r} is not declared in {config_path or 'pipeline.yaml'}")
    spec = specs[0]
    return Table(spec.keyspace, spec.table, spec.target_table)


Picture = Callable[[Browser, str, Table], None]


def lineage(browser: Browser, url: str, table: Table) -> None:
    browser.open(
        f"{url}/locations/{CODE_LOCATION}/asset-groups/{table.group}",
        [f"postgres_{table.target_table}", f"repair_{table.table}"],
    )


def health_checks(browser: Browser, url: str, table: Table) -> None:
    browser.resize(WIDTH, 1400)
    browser.open(
        f"{url}{table.asset(f'postgres_{table.target_table}')}?view=checks",
        ["discrepancy_rate", "Latest execution", "Plots"],
    )
    browser.wait_until("document.querySelectorAll('canvas').length > 0", "the checks' plots")


def health_observations(browser: Browser, url: str, table: Table) -> None:
    browser.resize(WIDTH, 1400)
    browser.open(
        f"{url}{table.asset(f'postgres_{table.target_table}')}",
        ["Latest observation", "Latest check results", "lag_messages"],
    )
    browser.click_text("Plots")
    browser.wait_until("document.querySelectorAll('canvas').length > 0", "the observation plots")
    browser.scroll_to_text("Metadata")


def partitions(browser: Browser, url: str, table: Table) -> None:
    browser.open(
        f"{url}{table.asset(f'reconciliation_{table.table}')}?view=partitions",
        ["Partitions", "Materialized ("],
    )
    browser.click_text("00: ", exact=False)
    browser.wait_for_text(["token_range", "in_sync", "catch_up_confirmed"], "the slice")


def backfills(browser: Browser, url: str, table: Table) -> None:
    browser.open(f"{url}/overview/backfills", [f"reconciliation_{table.table}", "partitions"])


PICTURES: dict[str, Picture] = {
    "lineage.png": lineage,
    "health-checks.png": health_checks,
    "health-observations.png": health_observations,
    "partitions.png": partitions,
    "backfills.png": backfills,
}


def take_pictures(url: str, table: Table, out: Path, profile: Path) -> list[Path]:
    """Every picture of :data:`PICTURES`, in ``out``; a page that never shows what it is
    about raises :class:`ScreenshotError` instead of leaving a blank picture."""
    taken = []
    with Browser(profile) as browser:
        for name, picture in PICTURES.items():
            browser.resize(WIDTH, HEIGHT)
            picture(browser, url, table)
            taken.append(browser.screenshot(out / name))
    return taken


def stack_env() -> dict[str, str]:
    """The local stack's connection settings, for those the environment does not set."""
    from cdc_pipelines.devstack import stack
    from cdc_pipelines.devstack.layout import StackLayout

    return {k: v for k, v in stack.stack_env(StackLayout.from_env()).items() if k not in os.environ}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dagster-home", type=Path, default=REPO / "dagster_home", help="default: dagster_home/"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "ui", help="default: docs/ui/")
    parser.add_argument("--config", type=Path, default=None, help="default: $CDC_PIPELINE_CONFIG")
    parser.add_argument("--table", default=None, help="ks.table (default: the first declared)")
    args = parser.parse_args(argv)
    env = stack_env()
    if args.config is not None:
        env["CDC_PIPELINE_CONFIG"] = str(args.config.resolve())
    config = args.config or Path(
        os.environ.get(
            "CDC_PIPELINE_CONFIG", env.get("CDC_PIPELINE_CONFIG", REPO / "pipeline.yaml")
        )
    )
    table = declared_table(config, args.table)
    work = Path(tempfile.mkdtemp(prefix="cdc-ui-screenshots-"))
    try:
        with webserver(args.dagster_home.resolve(), env, work / "webserver.log") as server:
            for path in take_pictures(server.url, table, args.out, work / "chromium"):
                print(f"{path} ({path.stat().st_size // 1024} KiB)")
    except ScreenshotError as exc:
        print(f"ui_screenshots: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
