"""Repair against the real PostgreSQL: guarded bulk upserts/deletes, dry-run script, audit, resume.

Each test owns a schema (``pg_schema``); tables are created from the declaration with
:mod:`cdc_pipelines.postgres.ddl`, so repair meets exactly the DDL the pipeline deploys.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cassandra.util import Date, Duration, SortedSet, Time
from psycopg import sql
from psycopg_pool import ConnectionPool

from cdc_pipelines.config import TableSpec
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.postgres.audit import (
    AuditDetail,
    AuditTables,
    RepairAction,
    read_run_actions,
    read_run_batches,
)
from cdc_pipelines.postgres.ddl import create_statements
from cdc_pipelines.postgres.repair import (
    BatchReport,
    ExtraRow,
    RepairOutcome,
    RepairPlan,
    apply_repair,
    batch_count,
    encode_plan,
    plan_repair,
    render_script,
)
from cdc_pipelines.rows.layout import upsert_layout
from cdc_pipelines_tests.declarations import replicated

VERSION = "_cdc_version_us"
LOCK_WAIT_TIMEOUT_S = 20.0
UTC = dt.UTC

# Hostile names on purpose: reserved words, quotes, mixed case, unicode, '%' (psycopg's
# placeholder character) and a space.
HOSTILE_COLUMNS: dict[str, Any] = {
    "user": "text",
    "MixedCase": "int",
    "naïve_ключ": "timestamp",
    '"quoted"': "text",
    "select": "uuid",
    "pct%": "decimal",
    "big int": "varint",
    "f64": "double",
    "f32": "float",
    "flag": "boolean",
    "payload": "blob",
    "day": "date",
    "tod": "time",
    "tod_pg": {"type": "time", "target_type": "time"},
    "span": "duration",
    "span_pg": {"type": "duration", "target_type": "interval"},
    "addr": "inet",
    "ints": "list<int>",
    "tags": "set<text>",
    "ids": "list<uuid>",
    "ids_pg": {"type": "set<uuid>", "target_type": "uuid[]"},
    "attrs": "map<text, int>",
    "pair": "frozen<tuple<int, text>>",
}


def hostile_table(schema: str, name: str = "order") -> TableSpec:
    return TableSpec.model_validate(
        {
            "source": "shop.orders",
            "target": f"{schema}.{name}",
            "partition_key": ["user", "MixedCase"],
            "clustering_key": ["naïve_ключ"],
            "columns": HOSTILE_COLUMNS,
        }
    )


SIMPLE_COLUMNS = {"id": "int", "name": "text", "qty": "int"}


def simple_table(schema: str, name: str = "items", **extra: Any) -> TableSpec:
    return TableSpec.model_validate(
        {
            "source": "shop.items",
            "target": f"{schema}.{name}",
            "partition_key": ["id"],
            "columns": SIMPLE_COLUMNS,
            **extra,
        }
    )


def create_target(dsn: str, table: TableSpec, *extra_sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in create_statements(table, VERSION):
            conn.execute(statement)
        for extra in extra_sql:
            conn.execute(extra)


def when(seconds: int) -> dt.datetime:
    return dt.datetime(2024, 5, 1, tzinfo=UTC) + dt.timedelta(seconds=seconds, microseconds=seconds)


def hostile_row(i: int, version: int, *, variant: int = 0) -> tuple[object, ...]:
    """A source row as cassandra-driver returns it (timestamps made aware), in upsert layout."""
    texts = ["it's", "back\\slash", 'dq"', "naïve ключ 😀", "\n\t", "E'\\x00'"]
    tricky = texts[(i + variant) % len(texts)]
    return (
        f"user-{i}-{texts[i % len(texts)]}",  # user (the key never depends on the variant)
        i,  # MixedCase
        when(i),  # naïve_ключ
        f"{tricky}-{variant}",  # "quoted"
        uuid.UUID(int=i * 7919 + variant),  # select
        Decimal(f"{'-' if i % 2 else ''}{10**30 + i}.{'0' * i}{variant}50"),  # pct% (scale kept)
        -(10**40) - i - variant,  # big int
        [float("nan"), float("inf"), float("-inf"), -0.0, 1e-310, 0.1][(i + variant) % 6],  # f64
        [1.5, float("nan"), float("-inf"), 3.25][(i + variant) % 4],  # f32
        bool((i + variant) % 2),  # flag
        bytes([0, 39, 92, 255, i % 256, variant]),  # payload
        Date(19_000 + i + variant),  # day
        Time(3_600_000_000_123 + i + variant),  # tod (ns; bigint keeps them)
        Time(3_600_000_000_000 + 1000 * (i + variant)),  # tod_pg (µs only)
        Duration(i + variant, -2, 3_000_000_007),  # span (text keeps ns)
        Duration(-(i + variant), 40, 5_000_000_000_000),  # span_pg (interval: µs)
        ["10.0.0.1", "2001:db8::1", "192.168.0.255"][(i + variant) % 3],  # addr (driver: str)
        [i, variant, -1],  # ints
        SortedSet([f"t{variant}", "o'brien", "c:\\dir"]),  # tags
        [uuid.UUID(int=i), uuid.UUID(int=variant + 1000)],  # ids
        SortedSet([uuid.UUID(int=5), uuid.UUID(int=variant + 6)]),  # ids_pg
        {"a": i, "b'": variant},  # attrs (the driver's OrderedMapSerializedKey is a Mapping)
        (i, f"p{tricky}"),  # pair
        version,
    )


def plan_written(
    table: TableSpec, rows: Sequence[tuple[object, ...]], *, verified_absent: bool, run_id: str
) -> RepairPlan:
    """The rows as inserts (the re-read found their keys absent) or as upserts."""
    if verified_absent:
        return plan_repair(replicated(table), [], inserts=rows, run_id=run_id)
    return plan_repair(replicated(table), rows, run_id=run_id)


def key_of(row: Sequence[object], table: TableSpec) -> tuple[object, ...]:
    layout = upsert_layout(table, VERSION)
    return tuple(row[layout.index(name)] for name in table.primary_key)


def table_state(dsn: str, table: TableSpec) -> list[str]:
    """Every row as PostgreSQL's own row text, sorted: exact (NaN, -0, scale, µs) and typed."""
    relation = sql.Identifier(table.target_schema, table.target_table)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(relation)
        ).fetchall()
    return [r[0] for r in rows]


def update_version(
    dsn: str, table: TableSpec, key_column: str, key: object, version: int, **values: Any
) -> None:
    relation = sql.Identifier(table.target_schema, table.target_table)
    assignments = [sql.SQL("{} = %s").format(sql.Identifier(VERSION))]
    params: list[Any] = [version]
    for name, value in values.items():
        assignments.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
        params.append(value)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
                relation, sql.SQL(", ").join(assignments), sql.Identifier(key_column)
            ),
            [*params, key],
        )


def run_psql(dsn: str, script: str, tmp_path: Path) -> None:
    path = tmp_path / "repair.sql"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(
        ["psql", dsn, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_dsn) as connection:
        yield connection


@pytest.fixture
def audit(pg_schema: str) -> AuditTables:
    # The test's own audit schema, inside its schema's name space and dropped with it.
    return AuditTables(schema=f"{pg_schema}_audit")


@pytest.fixture(autouse=True)
def _drop_audit_schema(postgres_dsn: str, audit: AuditTables) -> Iterator[None]:
    yield
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(audit.schema))
        )


# --------------------------------------------------------------------------- values and names


@pytest.mark.parametrize("verified_absent", [False, True], ids=["upserts", "inserts"])
def test_hostile_identifiers_and_every_type_are_written_exactly(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    verified_absent: bool,
) -> None:
    """Both write paths: the guarded upsert via a temp table, and the straight COPY of rows
    the re-read found absent (its audit comes from a separate key COPY)."""
    table = hostile_table(pg_schema)
    create_target(postgres_dsn, table)
    rows = [hostile_row(i, 1_000 + i) for i in range(6)]
    plan = plan_written(table, rows, verified_absent=verified_absent, run_id="hostile-1")

    outcome = apply_repair(conn, plan, audit=audit)

    assert (outcome.upserted, outcome.skipped_newer, outcome.deleted) == (6, 0, 0)
    assert outcome.copied == (6 if verified_absent else 0)
    trail = sorted(
        (
            a.key["user"],
            a.key["MixedCase"],
            dt.datetime.fromisoformat(a.key["naïve_ключ"]),
            a.action,
            a.version,
        )
        for a in read_run_actions(conn, "hostile-1", tables=audit)
    )
    assert trail == sorted((*r[:3], RepairAction.UPSERT, r[-1]) for r in rows)  # type: ignore[type-var]
    relation = sql.Identifier(pg_schema, "order")
    got = conn.execute(
        sql.SQL(
            'SELECT "user", "MixedCase", "naïve_ключ", """quoted""", "select", "pct%", "big int", '
            '"f64", "f32", "flag", "payload", "day", "tod", "tod_pg", "span", "span_pg"::text, '
            '"addr", "ints", "tags", "ids", "ids_pg", "attrs", "pair", {} FROM {} ORDER BY "MixedCase"'
        ).format(sql.Identifier(VERSION), relation)
    ).fetchall()
    assert len(got) == 6
    for row, source in zip(got, rows, strict=True):
        assert row[0:5] == source[0:5]
        assert row[5] == source[5] and str(row[5]) == format(source[5], "f")  # scale kept
        assert row[6] == source[6]
        for position in (7, 8):  # NaN, ±Infinity, -0.0 and subnormals survive
            assert repr(row[position]) == repr(source[position])
        assert row[9] == source[9]
        assert row[10] == source[10]
        assert row[11] == source[11].date()  # type: ignore[attr-defined]
        assert row[12] == source[12].nanosecond_time  # type: ignore[attr-defined]
        assert row[13] == dt.time(1, 0, 0, (source[13].nanosecond_time - 3_600_000_000_000) // 1000)  # type: ignore[attr-defined]
        span = source[14]
        assert row[14] == f"{span.months}mo{span.days}d{span.nanoseconds}ns"  # type: ignore[attr-defined]
        assert row[15].startswith(f"-{source[1]} mons +40 days") or source[1] == 0
        assert row[16] == ipaddress.ip_address(str(source[16]))
        assert row[17] == source[17]
        assert row[18] == list(source[18])  # type: ignore[call-overload]
        assert row[19] == [str(u) for u in source[19]]  # type: ignore[attr-defined]
        assert row[20] == list(source[20])  # type: ignore[call-overload]
        # jsonb in the source connector's shape, as the sink writes it (maps as key/value
        # entries, tuples as tuple_member_<i>), so repaired and streamed rows look alike.
        assert row[21] == [{"key": k, "value": v} for k, v in source[21].items()]  # type: ignore[attr-defined]
        assert row[22] == {
            f"tuple_member_{i}": v
            for i, v in enumerate(source[22])  # type: ignore[call-overload]
        }
        assert row[23] == source[-1]
    actions = read_run_actions(conn, "hostile-1", tables=audit)
    assert {a.action for a in actions} == {RepairAction.UPSERT}
    assert sorted(a.key["MixedCase"] for a in actions) == list(range(6))
    assert all(set(a.key) == {"user", "MixedCase", "naïve_ключ"} for a in actions)


@pytest.mark.parametrize("verified_absent", [False, True], ids=["upserts", "inserts"])
def test_a_plan_encoded_beforehand_writes_and_audits_what_its_rows_would(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    verified_absent: bool,
) -> None:
    """Every type and hostile name, encoded for COPY by encode_plan (as a slice worker does)
    and applied: the same rows, audit trail and batches as the plan applied as rows."""
    rows = [hostile_row(i, 1_000 + i) for i in range(7)]
    states, trails = [], []
    for name, encode in (("as_rows", False), ("encoded", True)):
        table = hostile_table(pg_schema, name)
        create_target(postgres_dsn, table)
        plan = plan_written(table, rows, verified_absent=verified_absent, run_id=f"enc-{name}")
        to_apply = encode_plan(conn, plan, batch_size=3) if encode else plan
        outcome = apply_repair(conn, to_apply, audit=audit, batch_size=3)
        assert (outcome.upserted, outcome.copied) == (7, 7 if verified_absent else 0)
        assert outcome.batches_applied == batch_count(to_apply, 3) == 3
        states.append(table_state(postgres_dsn, table))
        trails.append(
            sorted(
                (a.key["MixedCase"], a.action, a.version, a.batch)
                for a in read_run_actions(conn, plan.run_id, tables=audit)
            )
        )
    assert states[0] == states[1] and len(states[1]) == 7
    assert trails[0] == trails[1] and len(trails[1]) == 7


def test_an_encoded_insert_batch_whose_key_appeared_falls_back_to_the_guarded_upsert(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    inserts = [(i, f"repair-{i}", i, 200) for i in range(1, 6)]
    encoded = encode_plan(conn, plan_repair(replicated(table), [], inserts=inserts), 3)
    apply_repair(conn, plan_repair(replicated(table), [(3, "sink", 3, 300)]), audit=audit)

    outcome = apply_repair(conn, encoded, audit=audit, batch_size=3)

    assert (outcome.copied, outcome.upserted, outcome.skipped_newer) == (2, 4, 1)
    assert table_state(postgres_dsn, table) == [
        "(1,repair-1,1,200)",
        "(2,repair-2,2,200)",
        "(3,sink,3,300)",
        "(4,repair-4,4,200)",
        "(5,repair-5,5,200)",
    ]


def test_an_encoded_plan_is_refused_for_another_batch_size_or_a_changed_table(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    encoded = encode_plan(conn, plan_repair(replicated(table), [], inserts=[(1, "a", 1, 200)]))
    with pytest.raises(ReconcileError, match="encoded in batches of 20000 rows, not 7"):
        apply_repair(conn, encoded, audit=audit, batch_size=7)
    relation = sql.Identifier(pg_schema, "items")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN qty TYPE bigint").format(relation))
    conn.commit()
    with pytest.raises(ReconcileError, match="qty"):
        apply_repair(conn, encoded, audit=audit)
    assert table_state(postgres_dsn, table) == []


def test_an_encoded_plan_is_refused_when_a_column_modifier_changed(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    """text → varchar(3) keeps the COPY type OID; the plan must still not be applied."""
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    encoded = encode_plan(conn, plan_repair(replicated(table), [], inserts=[(1, "abcd", 1, 9)]))
    relation = sql.Identifier(pg_schema, "items")
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN name TYPE varchar(3)").format(relation))
    conn.commit()
    with pytest.raises(ReconcileError, match="column types changed after the repair was planned"):
        apply_repair(conn, encoded, audit=audit)
    assert table_state(postgres_dsn, table) == []


def test_a_value_that_cannot_be_encoded_is_named_by_column_and_key(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any]
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    plan = plan_repair(replicated(table), [], inserts=[(1, "a", 1, 9), (2, "b", 2, 9)])
    # A value the plan's checks would refuse, put in after them: what encoding does with it.
    broken = dataclasses.replace(plan, inserts=(plan.inserts[0], (2, "b", "two", 9)))
    with pytest.raises(
        ReconcileError, match=r"items: the value of column 'qty' in the row with key \(2,\)"
    ):
        encode_plan(conn, broken)


def test_encoding_on_a_lost_connection_names_the_table_and_the_fix(
    postgres_dsn: str, pg_schema: str
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    lost = psycopg.connect(postgres_dsn)
    lost.close()
    plan = plan_repair(replicated(table), [], inserts=[(1, "a", 1, 200)])
    with pytest.raises(ServiceError, match=rf"table {pg_schema}\.items: .*check the connection"):
        encode_plan(lost, plan)


def test_plan_rejects_bad_rows_with_table_column_and_key(pg_schema: str) -> None:
    table = hostile_table(pg_schema)
    good = hostile_row(1, 10)
    layout = upsert_layout(table, VERSION)

    naive = list(good)
    naive[layout.index("naïve_ключ")] = dt.datetime(2024, 1, 1)
    with pytest.raises(ReconcileError, match=rf"{pg_schema}\.order.*naïve_ключ.*naive"):
        plan_repair(replicated(table), [naive])

    nul = list(good)
    nul[layout.index('"quoted"')] = "a\x00b"
    with pytest.raises(ReconcileError, match=r"key \(user=.*'\"quoted\"'.*NUL"):
        plan_repair(replicated(table), [nul])

    missing_key = list(good)
    missing_key[layout.index("MixedCase")] = None
    with pytest.raises(ReconcileError, match="key column 'MixedCase' is NULL"):
        plan_repair(replicated(table), [missing_key])

    with pytest.raises(ReconcileError, match="version"):
        plan_repair(replicated(table), [(*good[:-1], None)])
    with pytest.raises(ReconcileError, match="expected 24"):
        plan_repair(replicated(table), [good[:-2]])
    with pytest.raises(ReconcileError, match="listed twice"):
        plan_repair(replicated(table), [good, (*good[:-1], 11)])
    with pytest.raises(ReconcileError, match="both upserted and deleted"):
        plan_repair(replicated(table), [good], [ExtraRow(key_of(good, table), 5)])
    nanos = list(good)
    nanos[layout.index("span_pg")] = Duration(0, 0, 1)
    with pytest.raises(ReconcileError, match=r"span_pg.*nanoseconds"):
        plan_repair(replicated(table), [nanos])
    with pytest.raises(ReconcileError, match="run id"):
        plan_repair(replicated(table), [good], run_id="bad id; --")


# --------------------------------------------------------------------------- guards and script


def _seed_scenario(dsn: str, table: TableSpec, audit: AuditTables) -> list[tuple[object, ...]]:
    """Target rows before repair; returns the repair's upsert rows (see the test for the cases)."""
    seed = [hostile_row(i, 100) for i in range(2, 6)] + [hostile_row(i, 50) for i in (10, 11)]
    with psycopg.connect(dsn) as conn:
        apply_repair(conn, plan_repair(replicated(table), seed, run_id="seed"), audit=audit)
    # 2: older and different → updated. 3: newer (900) → kept. 4: same version and content →
    # left unchanged. 5: same version, different content → updated. 1: missing → inserted.
    update_version(dsn, table, "MixedCase", 3, 900, **{'"quoted"': "newer"})
    update_version(dsn, table, "MixedCase", 5, 200)
    update_version(dsn, table, "MixedCase", 11, 70)  # an extra whose version advanced
    return [
        hostile_row(1, 200),
        hostile_row(2, 200, variant=1),
        hostile_row(3, 200, variant=1),
        hostile_row(4, 100),
        hostile_row(5, 200, variant=1),
    ]


def test_dry_run_script_via_psql_reaches_the_same_state_as_apply(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    tmp_path: Path,
) -> None:
    applied, scripted = hostile_table(pg_schema, "order"), hostile_table(pg_schema, "order script")
    deletes = [
        ExtraRow(key_of(hostile_row(10, 0), applied), 50),  # unchanged since the scan → deleted
        ExtraRow(key_of(hostile_row(11, 0), applied), 50),  # advanced to 70 → kept
        ExtraRow(key_of(hostile_row(12, 0), applied), 50),  # already gone
    ]
    states = []
    for table in (applied, scripted):
        create_target(postgres_dsn, table)
        upserts = _seed_scenario(postgres_dsn, table, audit)
        states.append(table_state(postgres_dsn, table))
    assert states[0] == states[1]

    # Row 1 is missing from the target: the re-read found it absent, so it is an insert.
    inserts, upserts = upserts[:1], upserts[1:]
    plan = plan_repair(
        replicated(applied), upserts, deletes, inserts=inserts, run_id="script-vs-apply"
    )
    outcome = apply_repair(conn, plan, audit=audit, batch_size=2)
    script = render_script(
        plan_repair(
            replicated(scripted), upserts, deletes, inserts=inserts, run_id="script-vs-apply"
        )
    )
    run_psql(postgres_dsn, script, tmp_path)

    assert (outcome.upserted, outcome.deleted, outcome.copied) == (3, 1, 1)
    assert (outcome.skipped_newer, outcome.skipped_unchanged, outcome.skipped_absent) == (2, 1, 1)
    after = table_state(postgres_dsn, applied)
    assert after == table_state(postgres_dsn, scripted)
    assert len(after) == 6  # rows 1-5 and the advanced extra 11
    assert any("newer" in row and ",900)" in row for row in after)
    header = script.splitlines()[:8]
    assert any("run id:    script-vs-apply" in line for line in header)
    assert any("upserts:   5 (1 absent" in line for line in header) and any(
        "deletes:   3" in line for line in header
    )
    assert "BEGIN;" in script and script.rstrip().endswith("COMMIT;")
    assert f'"{pg_schema}"."order script"' in script
    by_key = {
        (a.key["MixedCase"], a.action)
        for a in read_run_actions(conn, "script-vs-apply", tables=audit)
    }
    assert by_key == {
        (1, RepairAction.UPSERT),
        (2, RepairAction.UPSERT),
        (3, RepairAction.SKIP_NEWER),
        (4, RepairAction.SKIP_UNCHANGED),
        (5, RepairAction.UPSERT),
        (10, RepairAction.DELETE),
        (11, RepairAction.SKIP_NEWER),
        (12, RepairAction.SKIP_ABSENT),
    }


def test_script_header_cannot_break_out_of_its_comment(pg_schema: str) -> None:
    table = TableSpec.model_validate(
        {
            "source": "shop.items",
            "target": f"{pg_schema}.evil\nDROP TABLE x; --",
            "partition_key": ["id"],
            "columns": {"id": "int"},
        }
    )
    script = render_script(plan_repair(replicated(table), [(1, 5)]))
    header = script[: script.index("SET client_encoding")]
    assert all(line.startswith("-- ") for line in header.splitlines())
    assert "evil\\u000aDROP" in header


# --------------------------------------------------------------------------- concurrency


def _wait_until_blocked(dsn: str, application_name: str) -> None:
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
    with psycopg.connect(dsn, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock'",
                (application_name,),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the repair never waited for the concurrent writer's row lock")


def _repair_blocked_by(
    dsn: str, plan: RepairPlan, audit: AuditTables, release: Callable[[], object]
) -> RepairOutcome:
    """Apply ``plan`` in a thread, wait until it waits on a writer's lock, then ``release``
    the writer (commit or roll back) and return the repair's outcome."""
    app = f"repair-{uuid.uuid4().hex[:8]}"
    outcome: list[RepairOutcome] = []

    def run() -> None:
        with psycopg.connect(dsn, application_name=app) as repair_conn:
            outcome.append(apply_repair(repair_conn, plan, audit=audit))

    thread = threading.Thread(target=run)
    thread.start()
    _wait_until_blocked(dsn, app)
    release()
    thread.join(timeout=LOCK_WAIT_TIMEOUT_S)
    assert outcome, "the repair did not finish"
    return outcome[0]


@pytest.mark.parametrize("kind", ["insert", "upsert", "delete"])
def test_concurrent_writer_newer_version_survives_a_running_batch(
    postgres_dsn: str, pg_schema: str, audit: AuditTables, kind: str
) -> None:
    """The writer locks the row and commits a newer version while the batch waits on it.

    ``insert``: the rows were verified absent, and the writer inserts one of their keys; the
    straight COPY waits for it, meets the key, and the batch falls back to the guarded upsert.
    """
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    if kind != "insert":
        with psycopg.connect(postgres_dsn) as seed:
            apply_repair(
                seed,
                plan_repair(
                    replicated(table), [(i, f"old-{i}", i, 100) for i in range(1, 6)], run_id="seed"
                ),
                audit=audit,
            )
    repaired = [(i, f"repair-{i}", 10 * i, 200) for i in range(1, 6)]
    if kind == "insert":
        plan = plan_repair(replicated(table), [], inserts=repaired)
    elif kind == "upsert":
        plan = plan_repair(replicated(table), repaired)
    else:
        plan = plan_repair(replicated(table), [], [ExtraRow((i,), 100) for i in range(1, 6)])
    with psycopg.connect(postgres_dsn) as writer:
        items = sql.Identifier(pg_schema, "items")
        if kind == "insert":
            writer.execute(
                sql.SQL("INSERT INTO {} (id, name, qty, {}) VALUES (3, 'writer', 3, 300)").format(
                    items, sql.Identifier(VERSION)
                )
            )  # uncommitted: the key is claimed until the writer ends
        else:
            writer.execute(
                sql.SQL("UPDATE {} SET name = 'writer', {} = 300 WHERE id = 3").format(
                    items, sql.Identifier(VERSION)
                )
            )  # uncommitted: holds the row lock
        result = _repair_blocked_by(postgres_dsn, plan, audit, writer.commit)

    with psycopg.connect(postgres_dsn) as conn:
        rows: dict[int, str] = dict(
            conn.execute(
                sql.SQL("SELECT id, name || ':' || {} FROM {}").format(
                    sql.Identifier(VERSION), sql.Identifier(pg_schema, "items")
                )
            ).fetchall()
        )
        actions = {a.key["id"]: a.action for a in read_run_actions(conn, plan.run_id, tables=audit)}
    assert rows[3] == "writer:300"
    assert result.skipped_newer == 1 and actions[3] is RepairAction.SKIP_NEWER
    assert result.copied == 0  # the one insert batch met key 3 and fell back
    if kind != "delete":
        assert result.upserted == 4
        assert rows == {
            1: "repair-1:200",
            2: "repair-2:200",
            3: "writer:300",
            4: "repair-4:200",
            5: "repair-5:200",
        }
    else:
        assert result.deleted == 4 and rows == {3: "writer:300"}


@pytest.mark.parametrize("appeared_version", [300, 100], ids=["newer", "older"])
def test_an_absent_key_that_appeared_since_the_reread_falls_back_to_the_guarded_upsert(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    appeared_version: int,
) -> None:
    """The COPY meets the key, its savepoint is undone, and the same batch is upserted."""
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    plan = plan_repair(
        replicated(table), [], inserts=[(i, f"repair-{i}", i, 200) for i in range(1, 6)]
    )
    apply_repair(  # the sink writes key 3 after the re-read
        conn,
        plan_repair(replicated(table), [(3, "sink", 3, appeared_version)], run_id="sink"),
        audit=audit,
    )

    outcome = apply_repair(conn, plan, audit=audit, batch_size=3)

    assert outcome.copied == 2  # batch 1 (keys 4, 5) copied straight in; batch 0 fell back
    kept = appeared_version > 200
    assert (outcome.upserted, outcome.skipped_newer) == ((4, 1) if kept else (5, 0))
    row_3 = f"(3,sink,3,{appeared_version})" if kept else "(3,repair-3,3,200)"
    assert table_state(postgres_dsn, table) == [
        "(1,repair-1,1,200)",
        "(2,repair-2,2,200)",
        row_3,
        "(4,repair-4,4,200)",
        "(5,repair-5,5,200)",
    ]
    actions = {a.key["id"]: a.action for a in read_run_actions(conn, plan.run_id, tables=audit)}
    upsert = RepairAction.UPSERT
    assert actions == {
        1: upsert,
        2: upsert,
        3: RepairAction.SKIP_NEWER if kept else upsert,
        4: upsert,
        5: upsert,
    }
    batches = read_run_batches(conn, plan.run_id, tables=audit)
    assert [b.batch for b in batches] == [0, 1]


def test_a_writer_that_rolls_back_lets_the_straight_copy_through(
    postgres_dsn: str, pg_schema: str, audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    plan = plan_repair(
        replicated(table), [], inserts=[(i, f"repair-{i}", i, 200) for i in range(1, 6)]
    )
    with psycopg.connect(postgres_dsn) as writer:
        writer.execute(
            sql.SQL("INSERT INTO {} (id, name, qty, {}) VALUES (3, 'writer', 3, 300)").format(
                sql.Identifier(pg_schema, "items"), sql.Identifier(VERSION)
            )
        )
        outcome = _repair_blocked_by(postgres_dsn, plan, audit, writer.rollback)
    assert (outcome.upserted, outcome.copied, outcome.skipped_newer) == (5, 5, 0)
    assert table_state(postgres_dsn, table) == [f"({i},repair-{i},{i},200)" for i in range(1, 6)]


SHOUT = (
    "CREATE FUNCTION {s}.shout() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN NEW.name := upper(NEW.name); RETURN NEW; END$$"
)
# Each blocker's setup, how repair names it, and the names the three repaired rows end with.
COPY_BLOCKERS = {
    "row-level security": (
        ["ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"],
        "row-level security",
        "r1 r2 r3",
    ),
    "rule": (
        ["CREATE RULE on_delete AS ON DELETE TO {t} DO ALSO NOTIFY cdc_repair"],
        "rewrite rules",
        "r1 r2 r3",
    ),
    "trigger": (
        [
            SHOUT,
            "CREATE TRIGGER shout BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {s}.shout()",
        ],
        "user triggers",
        "R1 R2 R3",
    ),
    "trigger on a partition": (
        [
            "ALTER TABLE {t} RENAME TO items_plain",
            "CREATE TABLE {t} (LIKE {s}.items_plain INCLUDING ALL) PARTITION BY RANGE (id)",
            "CREATE TABLE {s}.items_low PARTITION OF {t} FOR VALUES FROM (MINVALUE) TO (2)",
            "CREATE TABLE {s}.items_high PARTITION OF {t} FOR VALUES FROM (2) TO (MAXVALUE)",
            SHOUT,
            "CREATE TRIGGER shout BEFORE INSERT ON {s}.items_high "
            "FOR EACH ROW EXECUTE FUNCTION {s}.shout()",
        ],
        "user triggers",
        "r1 R2 R3",
    ),
}


@pytest.mark.parametrize("blocker", sorted(COPY_BLOCKERS))
def test_a_table_where_copy_differs_from_insert_takes_the_guarded_path(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    blocker: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """COPY refuses row-level security, ignores rules, and a trigger may rewrite rows that
    only the guarded path's RETURNING sees: such tables never get the straight COPY."""
    caplog.set_level(logging.INFO, logger="cdc_pipelines.postgres.repair")
    table = simple_table(pg_schema)
    names = {
        "t": sql.Identifier(pg_schema, "items").as_string(None),
        "s": sql.Identifier(pg_schema).as_string(None),
    }
    setup, named, expected_names = COPY_BLOCKERS[blocker]
    create_target(postgres_dsn, table, *(text.format(**names) for text in setup))
    plan = plan_repair(replicated(table), [], inserts=[(i, f"r{i}", i, 200) for i in range(1, 4)])

    outcome = apply_repair(conn, plan, audit=audit)

    assert (outcome.upserted, outcome.copied) == (3, 0)
    assert f"has {named}: its 3 missing rows go through the guarded upsert" in caplog.text
    assert table_state(postgres_dsn, table) == [
        f"({i},{name},{i},200)" for i, name in enumerate(expected_names.split(), start=1)
    ]


def test_an_invalid_unique_index_is_refused_before_anything_is_written(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    """A failed CREATE UNIQUE INDEX CONCURRENTLY leaves an index that enforces nothing."""
    table = simple_table(pg_schema)
    items = sql.Identifier(pg_schema, "items")
    create_target(postgres_dsn, table)
    with psycopg.connect(postgres_dsn, autocommit=True) as setup:
        primary_key = setup.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
            (items.as_string(None),),
        ).fetchone()
        assert primary_key is not None
        setup.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                items, sql.Identifier(primary_key[0])
            )
        )
        setup.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a', 1, 1), (1, 'b', 1, 1)").format(items))
        with pytest.raises(psycopg.errors.UniqueViolation):
            setup.execute(
                sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY items_id ON {} (id)").format(items)
            )
        setup.execute(sql.SQL("DELETE FROM {}").format(items))
    plan = plan_repair(replicated(table), [], inserts=[(1, "repair", 1, 200)])

    with pytest.raises(ReconcileError, match=r"no valid primary key.*REINDEX"):
        apply_repair(conn, plan, audit=audit)

    assert table_state(postgres_dsn, table) == []


def test_newer_row_committed_before_apply_is_kept(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    plan = plan_repair(replicated(table), [(1, "repair", 1, 200)], [ExtraRow((2,), 100)])
    apply_repair(
        conn,
        plan_repair(replicated(table), [(1, "old", 1, 100), (2, "x", 2, 100)], run_id="s"),
        audit=audit,
    )
    update_version(postgres_dsn, table, "id", 1, 250, name="sink")
    update_version(postgres_dsn, table, "id", 2, 150)

    outcome = apply_repair(conn, plan, audit=audit)

    assert (outcome.upserted, outcome.deleted, outcome.skipped_newer) == (0, 0, 2)
    assert table_state(postgres_dsn, table) == ["(1,sink,1,250)", "(2,x,2,150)"]


# --------------------------------------------------------------------------- idempotence and resume


def test_reapplying_changes_nothing(postgres_dsn: str, pg_schema: str, audit: AuditTables) -> None:
    table = hostile_table(pg_schema)
    create_target(postgres_dsn, table)
    rows = [hostile_row(i, 500) for i in range(8)]
    extra = [hostile_row(i, 1) for i in (20, 21)]
    with ConnectionPool(postgres_dsn, min_size=1, max_size=2, open=True) as pool:
        apply_repair(pool, plan_repair(replicated(table), extra, run_id="seed"), audit=audit)
        plan = plan_repair(replicated(table), rows, [ExtraRow(key_of(r, table), 1) for r in extra])
        first = apply_repair(pool, plan, "first", batch_size=3, audit=audit)
        state = table_state(postgres_dsn, table)
        second = apply_repair(pool, plan, "second", batch_size=3, audit=audit)
        same_run = apply_repair(pool, plan, "first", batch_size=3, audit=audit)

    assert (first.upserted, first.deleted) == (8, 2)
    assert (second.upserted, second.deleted, second.changed) == (0, 0, 0)
    assert (second.skipped_unchanged, second.skipped_absent, second.skipped_newer) == (8, 2, 0)
    assert (same_run.batches_applied, same_run.batches_already_done, same_run.changed) == (0, 4, 0)
    assert table_state(postgres_dsn, table) == state


def test_plans_share_a_run_id_when_batches_are_numbered_on(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = hostile_table(pg_schema)
    create_target(postgres_dsn, table)
    first_plan = plan_repair(replicated(table), [hostile_row(i, 500) for i in range(5)])
    second_plan = plan_repair(replicated(table), [hostile_row(i, 500) for i in range(5, 9)])

    first = apply_repair(conn, first_plan, "shared", batch_size=2, audit=audit)
    after = batch_count(first_plan, 2)
    second = apply_repair(conn, second_plan, "shared", batch_size=2, audit=audit, first_batch=after)
    again = apply_repair(conn, second_plan, "shared", batch_size=2, audit=audit, first_batch=after)

    assert after == 3 and (first.upserted, second.upserted) == (5, 4)
    assert (again.batches_applied, again.batches_already_done) == (0, 2)
    assert len(table_state(postgres_dsn, table)) == 9
    with pytest.raises(ReconcileError, match="already applied batch 0 with different rows"):
        apply_repair(conn, second_plan, "shared", batch_size=2, audit=audit)


class SimulatedCrash(RuntimeError):
    pass


@pytest.mark.parametrize("verified_absent", [False, True], ids=["upserts", "inserts"])
def test_resume_after_a_crash_completes_without_duplicates(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    verified_absent: bool,
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    rows = [(i, f"n{i}", i, 10) for i in range(10)]
    plan = plan_written(table, rows, verified_absent=verified_absent, run_id="crashy")
    seen: list[int] = []

    def crash_in_batch_2(report: BatchReport) -> None:
        seen.append(report.batch)
        if report.batch == 2:
            raise SimulatedCrash("power cut")

    with pytest.raises(SimulatedCrash):
        apply_repair(conn, plan, batch_size=3, audit=audit, on_batch=crash_in_batch_2)

    assert seen == [0, 1, 2]
    assert len(table_state(postgres_dsn, table)) == 6  # batch 2 rolled back with the crash
    assert [b.batch for b in read_run_batches(conn, "crashy", tables=audit)] == [0, 1]

    resumed = apply_repair(conn, plan, batch_size=3, audit=audit)

    assert (resumed.batches_already_done, resumed.batches_applied, resumed.upserted) == (2, 2, 4)
    assert resumed.copied == (4 if verified_absent else 0)
    assert len(table_state(postgres_dsn, table)) == 10
    actions = read_run_actions(conn, "crashy", tables=audit)
    assert sorted(a.key["id"] for a in actions) == list(range(10))  # each key exactly once
    assert [b.batch for b in read_run_batches(conn, "crashy", tables=audit)] == [0, 1, 2, 3]
    with pytest.raises(ReconcileError, match=r"different rows.*new run id"):
        apply_repair(conn, plan, batch_size=4, audit=audit)


def test_a_failing_batch_rolls_back_completely_and_names_table_and_batch(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    relation = sql.Identifier(pg_schema, "items").as_string(None)
    create_target(postgres_dsn, table, f"ALTER TABLE {relation} ADD CHECK (qty < 1000)")
    rows = [(1, "a", 1, 5), (2, "b", 2, 5), (3, "c", 3, 5), (4, "bad", 5000, 5), (5, "e", 5, 5)]
    plan = plan_repair(replicated(table), rows, run_id="failing")

    with pytest.raises(ReconcileError) as failure:
        apply_repair(conn, plan, batch_size=2, audit=audit)

    message = str(failure.value)
    assert (
        f"{pg_schema}.items" in message and "batch 1 of 3" in message and "repair again" in message
    )
    assert [r.split(",")[0] for r in table_state(postgres_dsn, table)] == ["(1", "(2"]
    assert {a.batch for a in read_run_actions(conn, "failing", tables=audit)} == {0}
    assert [b.batch for b in read_run_batches(conn, "failing", tables=audit)] == [0]


def test_masked_columns_are_written_with_the_value_the_stream_writes(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    """Repair takes masked values as the key re-read hands them over (masked, never NULL)."""
    table = simple_table(
        pg_schema, columns={**SIMPLE_COLUMNS, "secret": "text"}, mask={"secret": "redact"}
    )
    create_target(postgres_dsn, table)
    assert upsert_layout(table, VERSION) == ("id", "name", "qty", "secret", VERSION)
    apply_repair(
        conn, plan_repair(replicated(table), [(1, "a", 1, "", 5)], run_id="m1"), audit=audit
    )
    apply_repair(
        conn,
        plan_repair(replicated(table), [(1, "b", 2, "", 6), (2, "c", 3, "", 6)], run_id="m2"),
        audit=audit,
    )

    assert table_state(postgres_dsn, table) == ['(1,b,2,"",6)', '(2,c,3,"",6)']


def test_an_open_transaction_is_refused(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    conn.execute("SELECT 1")
    with pytest.raises(ReconcileError, match="open transaction"):
        apply_repair(conn, plan_repair(replicated(table), [(1, "a", 1, 5)]), audit=audit)


def test_a_missing_target_is_named(
    pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema, name="absent")
    with pytest.raises(ReconcileError, match=rf"{pg_schema}\.absent does not exist"):
        apply_repair(conn, plan_repair(replicated(table), [(1, "a", 1, 5)]), audit=audit)


@pytest.mark.parametrize("verified_absent", [False, True], ids=["upserts", "inserts"])
def test_parallel_workers_reach_the_same_state_and_audit(
    postgres_dsn: str,
    pg_schema: str,
    conn: psycopg.Connection[Any],
    audit: AuditTables,
    verified_absent: bool,
) -> None:
    sequential, parallel = hostile_table(pg_schema, "seq"), hostile_table(pg_schema, "par")
    rows = [hostile_row(i, 300 + i) for i in range(11)]
    for table in (sequential, parallel):
        create_target(postgres_dsn, table)
    apply_repair(
        conn, plan_repair(replicated(sequential), rows, run_id="seq"), batch_size=2, audit=audit
    )
    with ConnectionPool(postgres_dsn, min_size=3, max_size=3, open=True) as pool:
        outcome = apply_repair(
            pool,
            plan_written(parallel, rows, verified_absent=verified_absent, run_id="par"),
            batch_size=2,
            workers=3,
            audit=audit,
        )
    assert (outcome.upserted, outcome.batches_applied) == (11, 6)
    assert outcome.copied == (11 if verified_absent else 0)
    assert table_state(postgres_dsn, sequential) == table_state(postgres_dsn, parallel)
    assert sorted(a.key["MixedCase"] for a in read_run_actions(conn, "par", tables=audit)) == list(
        range(11)
    )
    with pytest.raises(ReconcileError, match="ConnectionPool"):
        apply_repair(conn, plan_repair(replicated(parallel), rows), workers=2, audit=audit)


def test_exception_audit_records_only_deletes_and_keys_left_alone(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    apply_repair(
        conn,
        plan_repair(
            replicated(table), [(1, "a", 1, 5), (2, "b", 2, 5), (3, "c", 3, 9)], run_id="s"
        ),
        audit=audit,
    )
    plan = plan_repair(
        replicated(table),
        [(1, "a", 1, 5), (3, "old", 3, 8)],
        [ExtraRow((2,), 5), ExtraRow((9,), 5)],
        inserts=[(4, "new", 4, 8)],
        run_id="exceptions",
    )

    outcome = apply_repair(conn, plan, audit=audit, audit_detail=AuditDetail.EXCEPTIONS)

    assert (outcome.upserted, outcome.copied) == (1, 1)  # key 4, copied straight in
    assert (outcome.skipped_unchanged, outcome.skipped_newer) == (1, 1)
    assert (outcome.deleted, outcome.skipped_absent) == (1, 1)
    actions = {(a.key["id"], a.action) for a in read_run_actions(conn, "exceptions", tables=audit)}
    assert actions == {
        (3, RepairAction.SKIP_NEWER),
        (2, RepairAction.DELETE),
        (9, RepairAction.SKIP_ABSENT),
    }
    (inserted, upserted, deleted) = read_run_batches(conn, "exceptions", tables=audit)
    assert inserted.upserted == 1  # counted, its key not recorded
    assert (upserted.upserted, upserted.skipped_unchanged, upserted.skipped_newer) == (0, 1, 1)
    assert (deleted.deleted, deleted.skipped_absent) == (1, 1)
    assert table_state(postgres_dsn, table) == ["(1,a,1,5)", "(3,c,3,9)", "(4,new,4,8)"]


def test_the_per_key_trail_is_one_set_per_batch_and_action_unrolled_by_the_view(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = hostile_table(pg_schema)
    create_target(postgres_dsn, table)
    seed = [hostile_row(i, 5) for i in range(4)]
    apply_repair(conn, plan_repair(replicated(table), seed, run_id="seed"), audit=audit)
    newer = hostile_row(3, 9)
    apply_repair(conn, plan_repair(replicated(table), [newer], run_id="newer"), audit=audit)
    rows = [hostile_row(0, 5), hostile_row(1, 7), hostile_row(3, 8), hostile_row(4, 7)]
    extras = [
        ExtraRow(key_of(hostile_row(2, 5), table), 5),
        ExtraRow(key_of(hostile_row(7, 5), table), 5),
    ]

    apply_repair(conn, plan_repair(replicated(table), rows, extras, run_id="trail"), audit=audit)

    recorded = {
        (a.key["MixedCase"], a.action, a.version)
        for a in read_run_actions(conn, "trail", tables=audit)
    }
    assert recorded == {
        (0, RepairAction.SKIP_UNCHANGED, 5),
        (1, RepairAction.UPSERT, 7),
        (3, RepairAction.SKIP_NEWER, 8),
        (4, RepairAction.UPSERT, 7),
        (2, RepairAction.DELETE, 5),
        (7, RepairAction.SKIP_ABSENT, 5),
    }
    keys = [a.key for a in read_run_actions(conn, "trail", tables=audit)]
    assert all(k["user"].startswith(f"user-{k['MixedCase']}-") for k in keys)
    sets = conn.execute(
        sql.SQL(
            "SELECT batch, action, cardinality(versions) FROM {} WHERE run_id = 'trail' "
            "ORDER BY 1, 2"
        ).format(audit.action_sets)
    ).fetchall()
    assert sets == [
        (0, "skip_newer", 1),
        (0, "skip_unchanged", 1),
        (0, "upsert", 2),
        (1, "delete", 1),
        (1, "skip_absent", 1),
    ]


def test_an_audit_table_from_an_earlier_layout_is_named_and_nothing_is_written(
    postgres_dsn: str, pg_schema: str, conn: psycopg.Connection[Any], audit: AuditTables
) -> None:
    table = simple_table(pg_schema)
    create_target(postgres_dsn, table)
    with psycopg.connect(postgres_dsn, autocommit=True) as setup:
        setup.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(audit.schema)))
        setup.execute(sql.SQL("CREATE TABLE {} (run_id text, key jsonb)").format(audit.actions))

    with pytest.raises(
        ReconcileError, match=r"repair_actions is a table.*RENAME TO repair_actions_v1"
    ):
        apply_repair(
            conn, plan_repair(replicated(table), [(1, "a", 1, 5)], run_id="legacy"), audit=audit
        )

    assert table_state(postgres_dsn, table) == []
