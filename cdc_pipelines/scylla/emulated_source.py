"""An emulated change-data-capture source: write rows to the CQL table and publish their events.

The devstack's Cassandra has no Scylla CDC log, so nothing would capture its
writes. Each write here goes to the table with ``USING TIMESTAMP`` and, with the
same write time, to the table's topic in the Scylla CDC source connector's exact
envelope — what a real ScyllaDB + connector pair would produce. ``silent=True``
skips the event, which is how drift is injected on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from confluent_kafka import KafkaException, Producer

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.scylla.cdc_envelope import ScyllaCdcEnvelope
from cdc_pipelines.scylla.session import quote_cql

FLUSH_TIMEOUT_S = 60.0
WRITE_CONCURRENCY = 64
PRODUCER_SETTINGS = {"linger.ms": 20, "compression.type": "lz4", "enable.idempotence": True}


def now_us() -> int:
    return time.time_ns() // 1000


class EmulatedCdcSource:
    """Writes to one table and emits the matching CDC events."""

    def __init__(
        self,
        session: Session,
        bootstrap_servers: str,
        config: PipelineConfig,
        table: TableSpec,
    ) -> None:
        self.session = session
        self.config = config
        self.table = table
        self.envelope = ScyllaCdcEnvelope(config, table)
        self.producer = Producer({"bootstrap.servers": bootstrap_servers, **PRODUCER_SETTINGS})
        self._types = {c.name: c.cql_type for c in table.columns}
        names = [c.name for c in table.columns]
        target = f"{quote_cql(table.keyspace)}.{quote_cql(table.table)}"
        self._insert = session.prepare(
            f"INSERT INTO {target} ({', '.join(quote_cql(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)}) USING TIMESTAMP ?"
        )
        keys = table.primary_key
        self._delete = session.prepare(
            f"DELETE FROM {target} USING TIMESTAMP ? WHERE "
            + " AND ".join(f"{quote_cql(k)} = ?" for k in keys)
        )
        self._names = names
        self._errors: list[str] = []

    def upsert(
        self,
        rows: Sequence[Mapping[str, object]],
        write_time_us: int | None = None,
        *,
        silent: bool = False,
        op: str = "c",
    ) -> int:
        """Write full rows; each gets the write time (default: now, increasing per row)."""
        stamp = write_time_us or now_us()
        parameters = [
            (*(self.driver_value(self._types[n], row.get(n)) for n in self._names), stamp + offset)
            for offset, row in enumerate(rows)
        ]
        self._execute_all(self._insert, parameters)
        if not silent:
            for offset, row in enumerate(rows):
                message = self.envelope.upsert(row, stamp + offset, op="u" if op == "u" else "c")
                self._produce(message.key, message.value)
        return stamp + len(rows)

    def _execute_all(self, statement: Any, parameters: Sequence[tuple[object, ...]]) -> None:
        results = execute_concurrent_with_args(
            self.session, statement, parameters, concurrency=WRITE_CONCURRENCY
        )
        failures = [str(result) for ok, result in results if not ok]
        if failures:
            raise ServiceError(
                f"{self.table.source}: {len(failures)} write(s) failed, first: {failures[0]}"
            )

    def delete(
        self,
        keys: Sequence[Mapping[str, object]],
        write_time_us: int | None = None,
        *,
        silent: bool = False,
    ) -> None:
        stamp = write_time_us or now_us()
        parameters = [
            (
                stamp + offset,
                *(self.driver_value(self._types[k], key[k]) for k in self.table.primary_key),
            )
            for offset, key in enumerate(keys)
        ]
        self._execute_all(self._delete, parameters)
        if not silent:
            for offset, key in enumerate(keys):
                message = self.envelope.delete(key, stamp + offset)
                self._produce(message.key, message.value)

    def publish_raw(self, key: bytes | None, value: bytes | None) -> None:
        """Produce an arbitrary record to the table's topic (e.g. a poison message)."""
        self._produce(key, value)

    def flush(self) -> None:
        remaining = self.producer.flush(FLUSH_TIMEOUT_S)
        if remaining or self._errors:
            raise ServiceError(
                f"{self.envelope.topic}: {remaining} event(s) not delivered to Kafka "
                f"({'; '.join(self._errors[:3]) or 'flush timed out'})"
            )

    def _produce(self, key: bytes | None, value: bytes | None) -> None:
        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                self._errors.append(str(error))

        try:
            self.producer.produce(self.envelope.topic, key=key, value=value, on_delivery=delivered)
        except BufferError:
            self.producer.poll(1.0)
            self.producer.produce(self.envelope.topic, key=key, value=value, on_delivery=delivered)
        except KafkaException as exc:
            raise ServiceError(f"cannot produce to {self.envelope.topic}: {exc}") from None
        self.producer.poll(0)

    def driver_value(self, cql: CqlType, value: object) -> object:
        """The value in a form cassandra-driver binds (UDTs as tuples in declared field order)."""
        if value is None:
            return None
        if cql.name == "udt":
            fields = self.config.user_types[cql.udt_name or ""]
            get = value.get if isinstance(value, Mapping) else (lambda f: getattr(value, f, None))
            return tuple(self.driver_value(parse_cql_type(t), get(f)) for f, t in fields.items())
        if cql.name in ("list", "set"):
            converted = [self.driver_value(cql.params[0], v) for v in value]  # type: ignore[attr-defined]
            return set(converted) if cql.name == "set" else converted
        if cql.name == "map":
            return {
                self.driver_value(cql.params[0], k): self.driver_value(cql.params[1], v)
                for k, v in value.items()  # type: ignore[attr-defined]
            }
        if cql.name == "tuple":
            return tuple(
                self.driver_value(p, v)
                for p, v in zip(cql.params, value, strict=True)  # type: ignore[call-overload]
            )
        return value
