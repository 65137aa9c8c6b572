"""The end-to-end canary: write one row at the source, wait until PostgreSQL shows it.

A table declared with ``canary:`` is created, streamed and sunk like any other. A probe
writes its single row (partition key ``canary.key``) with ``canary.column`` set to the
write time in µs, then polls the PostgreSQL copy until that value (or a newer one) is
there, at most ``canary.timeout_s``. The time until it is visible is the pipeline's
latency as a user sees it: the CDC source, Kafka, Connect and the sink all in one number.

With ``emulate_cdc`` the row's change event is also published in the Scylla CDC source
connector's envelope (:mod:`cdc_pipelines.scylla.emulated_source`), as the devstack's
Cassandra has no CDC log; against ScyllaDB the source connector captures the write.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from cdc_pipelines.config import CanarySpec, PipelineConfig, TableSpec
from cdc_pipelines.errors import ConfigError, ServiceError
from cdc_pipelines.observability.metrics import (
    CANARY_LAST_SUCCESS,
    CANARY_LATENCY_SECONDS,
    TABLE_LABEL,
    Gauge,
)
from cdc_pipelines.scylla.emulated_source import EmulatedCdcSource, now_us
from cdc_pipelines.scylla.session import quote_cql

POLL_INTERVAL_S = 0.25


def canary_of(table: TableSpec) -> CanarySpec:
    if table.canary is None:
        raise ConfigError(f"{table.source} is not declared as a canary (no 'canary:' block)")
    return table.canary


def _clock(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M:%SZ")


@dataclass(frozen=True)
class CanaryProbe:
    """One probe: what was written, whether and when PostgreSQL showed it."""

    table: str
    """The source table (``keyspace.table``), the metrics' ``table`` label."""
    target: str
    written_at_us: int
    arrived: bool
    waited_s: float
    """From the write until the value was seen, or until the probe gave up."""
    seen_us: int | None
    """The canary value PostgreSQL holds at the end (None: no canary row there at all)."""
    finished_at: float
    """Unix time the probe ended."""

    @property
    def latency_s(self) -> float | None:
        """Seconds from the write at the source until PostgreSQL showed it (arrived only)."""
        return self.waited_s if self.arrived else None

    @property
    def last_arrival(self) -> float | None:
        """Unix time a canary last reached PostgreSQL: now when this one did, else the
        write time of the newest one PostgreSQL holds (None: none ever did)."""
        if self.arrived:
            return self.finished_at
        if self.seen_us is None or self.foreign:
            return None
        return self.seen_us / 1e6

    @property
    def foreign(self) -> bool:
        """PostgreSQL holds a value written after this probe's: another prober's clock runs
        ahead, or this host's stepped back. It proves nothing about this probe's arrival."""
        return self.seen_us is not None and not self.arrived and self.seen_us > self.written_at_us

    def age_s(self) -> float | None:
        """How long ago a canary last arrived, as of the end of the probe."""
        last = self.last_arrival
        return None if last is None else max(0.0, self.finished_at - last)

    def describe(self) -> str:
        written = _clock(self.written_at_us / 1e6)
        if self.arrived:
            return (
                f"the canary written to {self.table} at {written} reached {self.target} in "
                f"PostgreSQL after {self.waited_s:.2f}s"
            )
        age = self.age_s()
        if self.foreign:
            last = (
                "it holds a canary value later than this probe's (another prober's clock runs "
                "ahead, or this host's clock stepped back), which does not count"
            )
        elif age is None:
            last = "no canary has ever reached it"
        else:
            last = f"the newest canary it holds was written {age / 60:.1f} minutes ago"
        return (
            f"the canary written to {self.table} at {written} did not reach {self.target} in "
            f"PostgreSQL within {self.waited_s:.0f}s; {last}. Check the sink connector "
            "('cdc-pipelines connectors status'), its consumer lag and the source connector"
        )

    def gauges(self) -> list[Gauge]:
        """``cdc_canary_latency_seconds`` (when the write did not arrive: the time waited, a
        lower bound) and ``cdc_canary_last_success_timestamp_seconds`` (0: never)."""
        labels = {TABLE_LABEL: self.table}
        return [
            CANARY_LATENCY_SECONDS(self.waited_s, labels),
            CANARY_LAST_SUCCESS(self.last_arrival or 0.0, labels),
        ]


def write_canary(
    session: Any,
    config: PipelineConfig,
    table: TableSpec,
    written_at_us: int,
    kafka_bootstrap_servers: str | None,
) -> None:
    """Write the canary row at the source, its value and write time ``written_at_us``.

    With ``emulate_cdc`` its change event is published to the table's topic as well
    (``kafka_bootstrap_servers`` is then required).
    """
    canary = canary_of(table)
    row = {table.partition_key[0]: canary.key, canary.column: written_at_us}
    if canary.emulate_cdc:
        if not kafka_bootstrap_servers:
            raise ConfigError(f"{table.source}: emulate_cdc needs the Kafka bootstrap servers")
        source = EmulatedCdcSource(session, kafka_bootstrap_servers, config, table)
        source.upsert([row], written_at_us)
        source.flush()
        return
    # Names are quoted identifiers of the declaration; values are bound.
    target = f"{quote_cql(table.keyspace)}.{quote_cql(table.table)}"
    columns = ", ".join(quote_cql(c) for c in row)
    statement = f"INSERT INTO {target} ({columns}) VALUES (%s, %s) USING TIMESTAMP %s"  # noqa: S608
    try:
        session.execute(statement, (*row.values(), written_at_us))
    except Exception as exc:  # the driver raises several unrelated types
        raise ServiceError(f"cannot write the canary to {table.source}: {exc}") from None


def read_canary(conn: psycopg.Connection[Any], table: TableSpec) -> int | None:
    """The canary value PostgreSQL holds now, or None when it has no canary row."""
    canary = canary_of(table)
    query = sql.SQL("SELECT {col} FROM {tbl} WHERE {key} = %s").format(
        col=sql.Identifier(canary.column),
        tbl=sql.Identifier(table.target_schema, table.target_table),
        key=sql.Identifier(table.partition_key[0]),
    )
    try:
        row = conn.execute(query, (canary.key,)).fetchone()
    except psycopg.Error as exc:
        raise ServiceError(f"cannot read the canary from {table.target}: {exc}") from None
    return None if row is None or row[0] is None else int(row[0])


def probe(
    session: Any,
    conn: psycopg.Connection[Any],
    config: PipelineConfig,
    table: TableSpec,
    *,
    kafka_bootstrap_servers: str | None = None,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryProbe:
    """Write the canary and wait until ``conn`` (autocommit) shows it, at most ``timeout_s``
    (default: the declaration's)."""
    canary = canary_of(table)
    wait = canary.timeout_s if timeout_s is None else timeout_s
    # A value no other probe writes: a prober whose clock runs ahead (or this host's clock
    # stepping back) must not make an older or foreign value pass for this probe's.
    written_at_us = now_us() + secrets.randbelow(1000)
    started = time.monotonic()
    write_canary(session, config, table, written_at_us, kafka_bootstrap_servers)
    while True:
        seen = read_canary(conn, table)
        waited = time.monotonic() - started
        if seen == written_at_us:
            arrived = True
            break
        if waited >= wait:
            arrived = False
            break
        sleep(POLL_INTERVAL_S)
    return CanaryProbe(
        table=table.source,
        target=table.target,
        written_at_us=written_at_us,
        arrived=arrived,
        waited_s=waited,
        seen_us=seen,
        finished_at=time.time(),
    )
