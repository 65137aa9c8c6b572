"""Target rows re-read by primary key, for verification.

The keys go to a temp table by binary COPY (converted as repair converts them) and the
matching rows come back as ``COPY … (FORMAT CSV)`` parsed into the canonical form, so a
re-read row compares with a source row exactly as the diff compared them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ServiceError
from cdc_pipelines.postgres.literals import register_copy_dumpers
from cdc_pipelines.postgres.repair import checked_keys
from cdc_pipelines.postgres.target_index import numeric_text_columns, select_expression
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.rows.canonical import (
    POSTGRES_SESSION_SETTINGS,
    CanonicalSchema,
    from_postgres_text,
    postgres_csv_options,
)
from cdc_pipelines.rows.keys import Key, key_identity

KEYS_TEMP_NAME = "cdc_verify_keys"
# Whether a valid unique index has exactly the key's columns: then each key is looked up
# through it (a nested loop), whatever the table's size. Left to itself the planner joins
# a chunk's keys by hashing and scanning the whole table, so every chunk of a large
# re-read would cost a scan of the table (measured at 1M rows: 350 ms a chunk, against
# 70 ms by index; docs/benchmarks.md).
_KEY_INDEX = """
SELECT EXISTS (
    SELECT FROM pg_catalog.pg_index AS i
    WHERE i.indrelid = %(table)s::regclass AND i.indisunique AND i.indisvalid
      AND i.indpred IS NULL AND i.indexprs IS NULL
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C")
           FROM unnest(i.indkey) AS k(attnum)
           JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum)
          = %(key)s::text[]
)
"""
POSITION_COLUMN = "_cdc_verify_position"
TEXT_OID = 25
BPCHAR_OID = 1042  # psycopg has no binary dumper for char(n); its binary form is text's


class TargetRow(NamedTuple):  # a tuple: built for every key a verification re-reads
    """A target row re-read by key: row ``number`` of ``rows``, the canonical table (exact,
    e.g. time in ns) of the re-read it came from, and its version."""

    rows: pa.Table
    number: int
    version: int | None

    @property
    def canonical(self) -> pa.Table:
        """The row as a one-row canonical table."""
        return self.rows.slice(self.number, 1)

    @property
    def values(self) -> tuple[object, ...]:
        """The row as Python values, in ``CanonicalSchema.column_names`` order."""
        return tuple(column[self.number].as_py() for column in self.rows.columns)


def canonical_rows(targets: Sequence[TargetRow]) -> pa.Table:
    """``targets`` as one canonical table, in order: rows of one re-read are taken from its
    table at once (one take per run of rows from the same re-read)."""
    parts: list[pa.Table] = []
    start = 0
    for end in range(1, len(targets) + 1):
        if end == len(targets) or targets[end].rows is not targets[start].rows:
            indices = pa.array([t.number for t in targets[start:end]], pa.int64())
            parts.append(targets[start].rows.take(indices))
            start = end
    return pa.concat_tables(parts) if len(parts) != 1 else parts[0]


def _position_column(table: TableSpec) -> str:
    name = POSITION_COLUMN
    while any(c.name == name for c in table.columns):
        name = "_" + name
    return name


def read_target_rows(
    conn: psycopg.Connection[Any],
    replicated: ReplicatedTable,
    keys: Sequence[Key],
) -> list[TargetRow | None]:
    """Re-read ``keys`` from the target in one statement; one entry per key (None: absent).

    The keys go through a temp table by binary COPY (converted like repair converts them) and
    the rows come back as ``COPY … (FORMAT CSV)`` parsed into the canonical form.
    """
    if not keys:
        return []
    table = replicated.spec
    first: dict[object, int] = {}
    distinct = [first.setdefault(key_identity(k), i) == i for i, k in enumerate(keys)]
    unique_keys = [k for k, keep in zip(keys, distinct, strict=True) if keep]
    checked = checked_keys(replicated, unique_keys)
    schema = replicated.canonical
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
            indexed = cursor.execute(
                _KEY_INDEX,
                {"table": target.as_string(conn), "key": sorted(table.primary_key)},
            ).fetchone()
            if indexed and indexed[0]:
                for plan in ("enable_hashjoin", "enable_mergejoin"):
                    cursor.execute("SELECT set_config(%s, 'off', true)", (plan,))
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
                for number, row in enumerate(checked):
                    copy.write_row((number, *row[:-1]))
            data = bytearray()
            with cursor.copy(read) as copy:
                for chunk in copy:
                    data += chunk
    except psycopg.Error as exc:
        raise ServiceError(
            f"table {table.target}: re-reading {len(keys)} keys from the target failed: {exc}"
        ) from None
    found = _parse_target_csv(bytes(data), position, schema, numeric_text_columns(table))
    by_unique = [found.get(n) for n in range(len(unique_keys))]
    if len(unique_keys) == len(keys):
        return by_unique
    unique_number = {i: n for n, i in enumerate(i for i, keep in enumerate(distinct) if keep)}
    return [by_unique[unique_number[first[key_identity(k)]]] for k in keys]


def _parse_target_csv(
    data: bytes, position: str, schema: CanonicalSchema, numeric_text: frozenset[str]
) -> dict[int, TargetRow]:
    """The rows read, by the position of the key that asked for them."""
    if not data:
        return {}
    names = [position, *schema.column_names]
    table = pa_csv.read_csv(pa.BufferReader(data), **postgres_csv_options(names))
    positions = [int(p) for p in table.column(position).to_pylist()]
    canonical = from_postgres_text(
        table.drop_columns([position]), schema, numeric_text=numeric_text
    ).combine_chunks()
    versions = canonical.column(canonical.num_columns - 1).to_pylist()
    return {
        p: TargetRow(canonical, i, None if v is None else int(v))
        for i, (p, v) in enumerate(zip(positions, versions, strict=True))
    }
