"""Source-side DDL: the CQL keyspace, user types and tables of a declaration.

Used by the demo and the tests to create the source tables the declaration
describes; production clusters already have theirs. Tables get CDC with
post-images, which the source connector's ``cdc.include.after=full`` needs (the
option is ScyllaDB's; on Cassandra it is left out).
"""

from __future__ import annotations

from cassandra.cluster import Session

from cdc_pipelines.config import PipelineConfig, TableSpec
from cdc_pipelines.cqltypes import CqlType, parse_cql_type
from cdc_pipelines.scylla.session import quote_cql

SCYLLA_CDC_OPTIONS = "cdc = {'enabled': true, 'postimage': true}"
CDC_LOG_TTL_S = 86_400
"""The CDC log's TTL (ScyllaDB's default, as the options above set none): a sink lagging
longer than this has lost changes, which only a reconciliation with repair brings back."""


def cql_type_text(cql: CqlType) -> str:
    """The CQL spelling of a type with user types quoted."""
    if cql.name == "udt":
        inner = quote_cql(cql.udt_name or "")
    elif cql.params:
        inner = f"{cql.name}<{', '.join(cql_type_text(p) for p in cql.params)}>"
    else:
        inner = cql.name
    return f"frozen<{inner}>" if cql.frozen else inner


def keyspace_statement(keyspace: str, replication_factor: int = 1) -> str:
    return (
        f"CREATE KEYSPACE IF NOT EXISTS {quote_cql(keyspace)} WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
    )


def type_statements(config: PipelineConfig, keyspace: str) -> list[str]:
    statements = []
    for name, fields in config.user_types.items():
        body = ", ".join(
            f"{quote_cql(field)} {cql_type_text(parse_cql_type(text))}"
            for field, text in fields.items()
        )
        statements.append(
            f"CREATE TYPE IF NOT EXISTS {quote_cql(keyspace)}.{quote_cql(name)} ({body})"
        )
    return statements


def table_statement(table: TableSpec, scylla_cdc: bool = False) -> str:
    columns = ", ".join(f"{quote_cql(c.name)} {cql_type_text(c.cql_type)}" for c in table.columns)
    partition = ", ".join(quote_cql(k) for k in table.partition_key)
    clustering = "".join(f", {quote_cql(k)}" for k in table.clustering_key)
    options = f" WITH {SCYLLA_CDC_OPTIONS}" if scylla_cdc else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_cql(table.keyspace)}.{quote_cql(table.table)} "
        f"({columns}, PRIMARY KEY (({partition}){clustering})){options}"
    )


def create_source_tables(
    session: Session, config: PipelineConfig, scylla_cdc: bool = False
) -> list[str]:
    """Create every declared keyspace, user type and table (idempotent); returns the CQL run."""
    executed: list[str] = []
    for keyspace in sorted({t.keyspace for t in config.tables}):
        for statement in (keyspace_statement(keyspace), *type_statements(config, keyspace)):
            session.execute(statement)
            executed.append(statement)
    for table in config.tables:
        statement = table_statement(table, scylla_cdc)
        session.execute(statement)
        executed.append(statement)
    return executed
