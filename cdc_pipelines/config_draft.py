"""Draft a ``pipeline.yaml`` from a live keyspace: keys, column types and user types.

The draft is a starting point that :func:`cdc_pipelines.config.parse_config`
accepts as is; masks, exclusions, expectations and SLOs are left for a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import yaml

from cdc_pipelines.config import CQL_NAME, PG_IDENTIFIER_MAX_BYTES
from cdc_pipelines.cqltypes import CqlTypeSyntaxError, parse_cql_type
from cdc_pipelines.errors import ConfigError

# ScyllaDB keeps each table's change log next to it; it is not a table to replicate.
CDC_LOG_SUFFIX = "_scylla_cdc_log"
YAML_WIDTH = 100
_KEY_KINDS = ("partition_key", "clustering")


class CqlSession(Protocol):
    """The part of ``cassandra.cluster.Session`` the draft needs."""

    def execute(self, query: str, parameters: Any = ...) -> Iterable[Any]: ...


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str
    position: int
    type: str


class _FlowList(list[str]):
    """A list written inline (``[a, b]``), as keys read best."""


class _DraftDumper(yaml.SafeDumper):
    pass


_DraftDumper.add_representer(
    _FlowList,
    lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True),
)


def draft_declaration(session: CqlSession, keyspace: str) -> str:
    """A YAML declaration for every table of ``keyspace``, read from ``system_schema``."""
    found = list(
        session.execute(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s",
            (keyspace,),
        )
    )
    if not found:
        raise ConfigError(
            f"keyspace {keyspace!r} does not exist on the CQL endpoint; check its name "
            "(names are case-sensitive) or CDC_SCYLLA_CONTACT_POINTS"
        )
    user_types = {
        row.type_name: dict(zip(row.field_names, row.field_types, strict=True))
        for row in session.execute(
            "SELECT type_name, field_names, field_types FROM system_schema.types "
            "WHERE keyspace_name = %s",
            (keyspace,),
        )
    }
    columns: dict[str, list[_Column]] = {}
    for row in session.execute(
        "SELECT table_name, column_name, kind, position, type FROM system_schema.columns "
        "WHERE keyspace_name = %s",
        (keyspace,),
    ):
        columns.setdefault(row.table_name, []).append(
            _Column(row.column_name, row.kind, row.position, row.type)
        )
    tables = sorted(
        row.table_name
        for row in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
        )
        if not row.table_name.endswith(CDC_LOG_SUFFIX)
    )
    if not tables:
        raise ConfigError(f"keyspace {keyspace!r} has no tables to replicate")

    notes: list[str] = []
    drafted = [_draft_table(keyspace, name, columns.get(name, []), notes) for name in tables]
    document: dict[str, Any] = {"version": 1}
    if user_types:
        document["user_types"] = {name: user_types[name] for name in sorted(user_types)}
    document["tables"] = drafted
    body = yaml.dump(
        document,
        Dumper=_DraftDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=YAML_WIDTH,
    )
    return _header(keyspace, notes) + body


def _draft_table(keyspace: str, table: str, columns: list[_Column], notes: list[str]) -> Any:
    def keys(kind: str) -> _FlowList:
        return _FlowList(
            c.name for c in sorted((c for c in columns if c.kind == kind), key=lambda c: c.position)
        )

    if not CQL_NAME.match(keyspace) or not CQL_NAME.match(table):
        notes.append(f"{keyspace}.{table}: the name is not a plain ScyllaDB name; check it")
    ordered = [
        c
        for kind in _KEY_KINDS
        for c in sorted(columns, key=lambda c: c.position)
        if c.kind == kind
    ]
    ordered += sorted((c for c in columns if c.kind not in _KEY_KINDS), key=lambda c: c.name)
    declared: dict[str, str] = {}
    for column in ordered:
        try:
            parse_cql_type(column.type)
        except CqlTypeSyntaxError:
            notes.append(f"{keyspace}.{table}: column {column.name!r} skipped, type {column.type}")
            continue
        if len(column.name.encode()) > PG_IDENTIFIER_MAX_BYTES:
            notes.append(
                f"{keyspace}.{table}: column {column.name!r} is longer than PostgreSQL allows; "
                "rename it or exclude it"
            )
        if column.kind == "static":
            notes.append(f"{keyspace}.{table}: {column.name!r} is a static column")
        declared[column.name] = column.type
    entry: dict[str, Any] = {
        "source": f"{keyspace}.{table}",
        "target": f"{keyspace}.{table}",
        "partition_key": keys("partition_key"),
    }
    clustering = keys("clustering")
    if clustering:
        entry["clustering_key"] = clustering
    entry["columns"] = declared
    return entry


def _header(keyspace: str, notes: list[str]) -> str:
    lines = [
        f"# Draft declaration for keyspace {keyspace}, read from system_schema.",
        "# Review it: add mask/exclude for sensitive columns, expectations and lag SLOs.",
        "# The source connector needs CDC with post-images on every table:",
        "#   ALTER TABLE <table> WITH cdc = {'enabled': true, 'postimage': true};",
    ]
    lines += [f"# NOTE {note}" for note in notes]
    return "\n".join(lines) + "\n"
