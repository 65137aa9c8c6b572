"""Lag-aware verification: re-read every discrepancy on both sides and keep only the real ones.

After the sink has caught up (:func:`cdc_pipelines.kafka.offsets.wait_until_caught_up`), each
candidate key is re-read from the source (CQL, by primary key, with ``WRITETIME``; see
:mod:`cdc_pipelines.scylla.key_reads`) and the
target (PostgreSQL, by primary key) and reclassified: still different → confirmed; equal or
gone from both → resolved; written after the scan's cut-off on either side → in flight.

Keys are tuples of primary-key values in ``TableSpec.primary_key`` order, as cassandra-driver
takes and returns them (``uuid.UUID``, ``Decimal``, aware ``datetime``, ``str`` …).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from cdc_pipelines.config import TableSpec, Tolerances
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.kafka.offsets import CatchUp
from cdc_pipelines.postgres.literals import register_copy_dumpers
from cdc_pipelines.postgres.repair import ExtraRow, plan_repair, upsert_layout
from cdc_pipelines.postgres.target_index import numeric_text_columns, select_expression
from cdc_pipelines.reconcile.canonical import (
    POSTGRES_SESSION_SETTINGS,
    CanonicalSchema,
    from_postgres_text,
    from_python_rows,
    postgres_csv_options,
)
from cdc_pipelines.reconcile.compare import differing_columns
from cdc_pipelines.scylla.key_reads import SourceRow

KEYS_TEMP_NAME = "cdc_verify_keys"
VERIFY_CHUNK = 20_000  # keys re-read at a time: bounds memory at any drift
POSITION_COLUMN = "_cdc_verify_position"
TEXT_OID = 25
BPCHAR_OID = 1042  # psycopg has no binary dumper for char(n); its binary form is text's

Key = tuple[object, ...]


class CandidateKind(StrEnum):
    MISSING = "missing"  # in the source, not in the target
    EXTRA = "extra"  # in the target, not in the source
    MISMATCHED = "mismatched"  # in both, with different values


class Verdict(StrEnum):
    CONFIRMED = "confirmed"
    RESOLVED = "resolved"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True)
class Candidate:
    """A key the diff flagged, and how."""

    key: Key
    kind: CandidateKind


@dataclass(frozen=True)
class TargetRow:
    """A target row re-read by key: one row of the canonical table (exact, e.g. time in ns)."""

    canonical: pa.Table

    @property
    def version(self) -> int | None:
        version = self.canonical.column(self.canonical.num_columns - 1)[0].as_py()
        return None if version is None else int(version)

    @property
    def values(self) -> tuple[object, ...]:
        """The row as Python values, in ``CanonicalSchema.column_names`` order."""
        return tuple(column[0].as_py() for column in self.canonical.columns)


@dataclass(frozen=True)
class ConfirmedDiscrepancy:
    """A discrepancy that survived the re-read; ``kind`` is what it is now."""

    key: Key
    kind: CandidateKind
    source: SourceRow | None
    target_version: int | None


@dataclass(frozen=True)
class VerificationResult:
    """Candidates reclassified after the re-read."""

    confirmed: tuple[ConfirmedDiscrepancy, ...]
    resolved: tuple[Key, ...]
    in_flight: tuple[Key, ...]
    catch_up: CatchUp | None = None

    @property
    def confirmed_keys(self) -> tuple[Key, ...]:
        return tuple(c.key for c in self.confirmed)

    @property
    def insert_rows(self) -> tuple[tuple[object, ...], ...]:
        """Fresh source rows of the confirmed missing keys, absent from the target when re-read
        (plan_repair's ``inserts``)."""
        return tuple(
            c.source.values
            for c in self.confirmed
            if c.source is not None and c.kind is CandidateKind.MISSING
        )

    @property
    def upsert_rows(self) -> tuple[tuple[object, ...], ...]:
        """Fresh source rows of the confirmed mismatched keys (plan_repair's ``upserts``)."""
        return tuple(
            c.source.values
            for c in self.confirmed
            if c.source is not None and c.kind is not CandidateKind.MISSING
        )

    @property
    def delete_rows(self) -> tuple[ExtraRow, ...]:
        """Confirmed extras with the target version seen now (for plan_repair)."""
        return tuple(
            ExtraRow(c.key, c.target_version)
            for c in self.confirmed
            if c.kind is CandidateKind.EXTRA
        )


SourceReader = Callable[[Sequence[Key]], Sequence[SourceRow | None]]
TargetReader = Callable[[Sequence[Key]], Sequence[TargetRow | None]]


# --------------------------------------------------------------------------- target reader


def _position_column(table: TableSpec) -> str:
    name = POSITION_COLUMN
    while any(c.name == name for c in table.columns):
        name = "_" + name
    return name


def read_target_rows(
    conn: psycopg.Connection[Any],
    table: TableSpec,
    keys: Sequence[Key],
    *,
    version_column: str,
    user_types: Mapping[str, Mapping[str, str]] | None = None,
) -> list[TargetRow | None]:
    """Re-read ``keys`` from the target in one statement; one entry per key (None: absent).

    The keys go through a temp table by binary COPY (converted like repair converts them) and
    the rows come back as ``COPY … (FORMAT CSV)`` parsed into the canonical form.
    """
    if not keys:
        return []
    first: dict[object, int] = {}
    distinct = [first.setdefault(_identity(k), i) == i for i, k in enumerate(keys)]
    unique_keys = [k for k, keep in zip(keys, distinct, strict=True) if keep]
    checked = plan_repair(
        table, version_column, [], [ExtraRow(k, None) for k in unique_keys], user_types=user_types
    )
    schema = CanonicalSchema.from_table(table, version_column=version_column, user_types=user_types)
    position = _position_column(table)
    key_names = sql.SQL(", ").join(sql.Identifier(n) for n in table.primary_key)
    target = sql.Identifier(table.target_schema, table.target_table)
    temp = sql.Identifier("pg_temp", KEYS_TEMP_NAME)
    t, k = sql.Identifier("t"), sql.Identifier("k")
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}.{}").format(t, sql.Identifier(n), k, sql.Identifier(n))
        for n in table.primary_key
    )
    selected = sql.SQL(", ").join(select_expression(table, n, t) for n in schema.column_names)
    read = sql.SQL(
        "COPY (SELECT {k}.{position}, {selected} FROM {temp} AS {k} JOIN {target} AS {t} "
        "ON {match} ORDER BY 1) TO STDOUT (FORMAT CSV)"
    ).format(
        k=k,
        position=sql.Identifier(position),
        selected=selected,
        temp=temp,
        target=target,
        t=t,
        match=match,
    )
    try:
        with conn.transaction(), conn.cursor() as cursor:
            for name, value in POSTGRES_SESSION_SETTINGS.items():
                cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
            cursor.execute(
                sql.SQL(
                    "CREATE TEMP TABLE {} ON COMMIT DROP AS "
                    "SELECT 0::bigint AS {}, {} FROM {} WITH NO DATA"
                ).format(
                    sql.Identifier(KEYS_TEMP_NAME), sql.Identifier(position), key_names, target
                )
            )
            oids = [
                TEXT_OID if oid == BPCHAR_OID else oid
                for (oid,) in cursor.execute(
                    "SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END "
                    "FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid "
                    "WHERE a.attrelid = %s::regclass AND a.attnum > 0 ORDER BY a.attnum",
                    (temp.as_string(conn),),
                ).fetchall()
            ]
            register_copy_dumpers(cursor.adapters)
            with cursor.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(temp)) as copy:
                copy.set_types(oids)
                for number, row in enumerate(checked.deletes):
                    copy.write_row((number, *row[:-1]))
            data = bytearray()
            with cursor.copy(read) as copy:
                for chunk in copy:
                    data += chunk
    except psycopg.Error as exc:
        raise ServiceError(
            f"table {table.target}: re-reading {len(keys)} keys from the target failed: {exc}"
        ) from None
    found = dict(_parse_target_csv(bytes(data), position, schema, numeric_text_columns(table)))
    by_unique = [TargetRow(found[n]) if n in found else None for n in range(len(unique_keys))]
    unique_number = {i: n for n, i in enumerate(i for i, keep in enumerate(distinct) if keep)}
    return [by_unique[unique_number[first[_identity(k)]]] for k in keys]


def _parse_target_csv(
    data: bytes, position: str, schema: CanonicalSchema, numeric_text: frozenset[str]
) -> list[tuple[int, pa.Table]]:
    if not data:
        return []
    names = [position, *schema.column_names]
    table = pa_csv.read_csv(pa.BufferReader(data), **postgres_csv_options(names))
    positions = [int(p) for p in table.column(position).to_pylist()]
    canonical = from_postgres_text(
        table.drop_columns([position]), schema, numeric_text=numeric_text
    ).combine_chunks()
    return [(p, canonical.slice(i, 1)) for i, p in enumerate(positions)]


# --------------------------------------------------------------------------- verification


def _identity(key: Key) -> object:
    # Keys may hold lists (frozen collections) or NaN; make them usable as dict keys.
    def freeze(value: object) -> object:
        if isinstance(value, list | tuple | set | frozenset):
            return tuple(freeze(v) for v in value)
        if isinstance(value, float) and math.isnan(value):
            return ("NaN",)
        if isinstance(value, dict):
            return tuple(sorted((repr(k), freeze(v)) for k, v in value.items()))
        return value

    return freeze(key)


def _unique(candidates: Iterable[Candidate]) -> list[Candidate]:
    seen: dict[object, Candidate] = {}
    for candidate in candidates:
        seen.setdefault(_identity(candidate.key), candidate)
    return list(seen.values())


def _differs(
    pairs: Sequence[tuple[SourceRow, TargetRow]],
    table: TableSpec,
    schema: CanonicalSchema,
    tolerances: Tolerances,
    version_column: str,
) -> list[bool]:
    """Whether each (source, target) pair differs in a compared column beyond tolerance."""
    if not pairs:
        return []
    layout = upsert_layout(table, version_column)
    picks = [layout.index(name) for name in schema.column_names]
    source = pa.Table.from_batches(
        [from_python_rows([tuple(s.values[i] for i in picks) for s, _ in pairs], schema)]
    )
    target = pa.concat_tables([t.canonical for _, t in pairs])
    mask = differing_columns(source, target, schema.compared_columns, tolerances)
    return [bool(row.any()) for row in mask]


def verify_discrepancies(
    table: TableSpec,
    candidates: Iterable[Candidate],
    *,
    cutoff_us: int,
    read_source: SourceReader,
    read_target: TargetReader,
    version_column: str,
    tolerances: Tolerances | None = None,
    user_types: Mapping[str, Mapping[str, str]] | None = None,
    catch_up: CatchUp | None = None,
) -> VerificationResult:
    """Reclassify the diff's candidates from a fresh read of both sides.

    ``cutoff_us`` is the scan's cut-off (µs since the epoch): a row whose source write time or
    target version is later was written after the scan and is in flight, not a discrepancy.
    ``read_source``/``read_target`` re-read a list of keys (see
    :func:`cdc_pipelines.scylla.key_reads.read_source_rows` and
    :func:`read_target_rows`; bind them with ``functools.partial``). Pass the ``catch_up``
    result to keep it with the verdicts.
    """
    schema = CanonicalSchema.from_table(
        table, version_column=version_column, tolerances=tolerances, user_types=user_types
    )
    verdicts = _Verdicts()
    unique = _unique(candidates)
    for start in range(0, len(unique), VERIFY_CHUNK):
        _verify_chunk(
            table,
            [c.key for c in unique[start : start + VERIFY_CHUNK]],
            verdicts,
            cutoff_us=cutoff_us,
            read_source=read_source,
            read_target=read_target,
            schema=schema,
            tolerances=tolerances or Tolerances(),
            version_column=version_column,
        )
    return VerificationResult(
        tuple(verdicts.confirmed), tuple(verdicts.resolved), tuple(verdicts.in_flight), catch_up
    )


@dataclass
class _Verdicts:
    confirmed: list[ConfirmedDiscrepancy] = field(default_factory=list)
    resolved: list[Key] = field(default_factory=list)
    in_flight: list[Key] = field(default_factory=list)


def _verify_chunk(
    table: TableSpec,
    keys: list[Key],
    verdicts: _Verdicts,
    *,
    cutoff_us: int,
    read_source: SourceReader,
    read_target: TargetReader,
    schema: CanonicalSchema,
    tolerances: Tolerances,
    version_column: str,
) -> None:
    """Re-read one chunk of keys on both sides; memory stays bounded by the chunk."""
    sources = list(read_source(keys))
    targets = list(read_target(keys))
    if len(sources) != len(keys) or len(targets) != len(keys):
        raise ReconcileError(
            f"table {table.source}: a reader returned {len(sources)}/{len(targets)} rows for "
            f"{len(keys)} keys; readers must return one entry (or None) per key"
        )
    both = [
        i
        for i, (s, t) in enumerate(zip(sources, targets, strict=True))
        if s is not None and t is not None
    ]
    differs = dict(
        zip(
            both,
            _differs(
                [(sources[i], targets[i]) for i in both],  # type: ignore[misc]
                table,
                schema,
                tolerances,
                version_column,
            ),
            strict=True,
        )
    )
    confirmed, resolved, in_flight = verdicts.confirmed, verdicts.resolved, verdicts.in_flight
    for i, key in enumerate(keys):
        source, target = sources[i], targets[i]
        target_version = target.version if target is not None else None
        if (source is not None and source.version > cutoff_us) or (
            target_version is not None and target_version > cutoff_us
        ):
            in_flight.append(key)
        elif source is None and target is None:
            resolved.append(key)
        elif source is None:
            confirmed.append(ConfirmedDiscrepancy(key, CandidateKind.EXTRA, None, target_version))
        elif target is None:
            confirmed.append(ConfirmedDiscrepancy(key, CandidateKind.MISSING, source, None))
        elif differs[i]:
            confirmed.append(
                ConfirmedDiscrepancy(key, CandidateKind.MISMATCHED, source, target_version)
            )
        else:
            resolved.append(key)
