"""One definition of a row's version, read the same way by the scan and the key re-read.

The sink stamps a row with its change event's time; an update of an excluded or masked
column is a change event too, so the source version must move with it. A multi-cell
collection has no cell write time, so a collection-only change cannot move it.
"""

from __future__ import annotations

from typing import Any

from cdc_pipelines.config import TableSpec
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import slice_by_id
from cdc_pipelines.scylla.key_reads import read_source_rows
from cdc_pipelines.scylla.reader import read_slice
from cdc_pipelines_tests.declarations import replicated

T0 = 1_700_000_000_000_000


def notes_table(keyspace: str) -> ReplicatedTable:
    spec = TableSpec.model_validate(
        {
            "source": f"{keyspace}.notes",
            "target": "public.notes",
            "partition_key": ["id"],
            "columns": {
                "id": "int",
                "body": "text",
                "secret": "int",
                "tags": "set<text>",
                "internal": "text",
            },
            "exclude": ["internal"],
            "mask": {"secret": "redact"},
        }
    )
    return replicated(spec, slices=1)


def scanned_version(session: Any, table: ReplicatedTable) -> int:
    rows = read_slice(session, table, slice_by_id("00", 1)).to_pylist()
    assert len(rows) == 1
    return int(rows[0][table.version_column])


def test_excluded_and_masked_updates_move_the_version_and_collections_do_not(
    cql_session: Any, keyspace: str
) -> None:
    cql_session.execute(
        f"CREATE TABLE {keyspace}.notes (id int PRIMARY KEY, body text, secret int, "
        "tags set<text>, internal text)"
    )
    table = notes_table(keyspace)
    cql_session.execute(
        f"INSERT INTO {keyspace}.notes (id, body, secret, tags, internal) "
        f"VALUES (1, 'b', 7, {{'x'}}, 'i') USING TIMESTAMP {T0}"
    )

    def versions() -> tuple[int, int]:
        (reread,) = read_source_rows(cql_session, table, [(1,)])
        assert reread is not None
        return reread.version, scanned_version(cql_session, table)

    assert versions() == (T0, T0)
    cql_session.execute(
        f"UPDATE {keyspace}.notes USING TIMESTAMP {T0 + 10} SET internal = 'j' WHERE id = 1"
    )
    assert versions() == (T0 + 10, T0 + 10)  # excluded, yet a change event
    cql_session.execute(
        f"UPDATE {keyspace}.notes USING TIMESTAMP {T0 + 20} SET secret = 8 WHERE id = 1"
    )
    assert versions() == (T0 + 20, T0 + 20)  # masked, yet a change event
    cql_session.execute(
        f"UPDATE {keyspace}.notes USING TIMESTAMP {T0 + 30} SET tags = tags + {{'y'}} WHERE id = 1"
    )
    assert versions() == (T0 + 20, T0 + 20)  # no cell write time for a multi-cell set
    (reread,) = read_source_rows(cql_session, table, [(1,)])
    assert reread is not None and reread.values[2] == 0  # the masked value, as the sink has it
