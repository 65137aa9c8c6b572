"""Kafka Connect configurations derived from the declaration.

One Scylla CDC source connector captures every declared table; one Debezium JDBC
sink per table writes its topic into the table created by our DDL. Builders are
pure: they return :class:`ConnectorConfig` values (all strings) and never call
Connect; the REST client in :mod:`cdc_pipelines.connect.client` applies them.

The sink's transform chain (checked against the 3.6.0.Final jars):

1. ``unwrap`` — ``io.debezium.transforms.ExtractNewRecordState`` with
   ``add.fields=source.ts_us`` and ``delete.tombstone.handling.mode=delete-to-tombstone``.
   The sink could read the envelope natively, but then nothing can reach into
   ``source`` to fill the version column. Unwrapping keeps the full post-image
   row (the source runs with ``cdc.include.after=full``) plus ``__source_ts_us``;
   a delete event becomes a tombstone (key, null value), which the sink turns
   into ``DELETE … WHERE <key>`` because ``delete.enabled=true`` and
   ``primary.key.mode=record_key``. ``delete-to-tombstone`` (not ``tombstone``)
   is chosen because it converts the delete event itself and so does not depend
   on the source also emitting tombstones.
2. ``shape`` — Kafka's ``ReplaceField$Value``: ``renames=__source_ts_us:<version
   column>`` (the source write time in µs) and ``exclude=`` the excluded columns
   plus those the sink cannot write (see :mod:`cdc_pipelines.postgres.types`).
3. ``maskHashed`` — the project's ``HashFields``: ``hash`` replaces a text column
   with the hex SHA-256 of a salt (a config-provider secret) and the value, so
   equal values stay equal. ``maskRedacted`` — Kafka's ``MaskField$Value``:
   ``redact`` empties a text column; masked columns of other types become their
   type's empty value (0, false, epoch) in either mode.

Step 0, ``json`` — the project's ``ComplexFieldsToJson``, only when the table has
map, tuple, UDT or nested columns: it rewrites them inside the envelope as JSON
text for their ``jsonb`` columns (the sink cannot write structs).

Steps 2-3 carry the predicate ``isTombstone`` negated: MaskField fails on a null
value, and a tombstone must reach the sink untouched to delete the row.

Errors: the sink runs with ``errors.tolerance=all`` and a per-table dead-letter
topic with context headers, which catches records that fail conversion or a
transform. A PostgreSQL error inside the sink is not routed there (the 3.6 sink
does not use Connect's errant-record reporter): the task fails and the watch
sensors see it. The source runs with ``errors.tolerance=none``: a CDC source that
skipped a record would lose a change silently, and DLQs are a sink concept.

Credentials are never inline: user names and passwords are config-provider
references (``${file:<path>:<key>}`` or ``${vault:<path>:<key>}``) that the
worker resolves, so they never appear in the REST API or the config topic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

from cdc_pipelines.config import MaskMode, PipelineConfig, SecretsConfig, TableSpec
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.postgres.types import JSON_PG_TYPE, column_pg_type, pg_type
from cdc_pipelines.rows.connector_form import STRING_CARRIED
from cdc_pipelines.settings import DEFAULT_SCYLLA_CONTACT_POINTS, DEFAULT_SCYLLA_PORT

SCYLLA_CONNECTOR_CLASS = "com.scylladb.cdc.debezium.connector.ScyllaConnector"
JDBC_SINK_CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
EXTRACT_NEW_RECORD_STATE = "io.debezium.transforms.ExtractNewRecordState"
REPLACE_FIELD = "org.apache.kafka.connect.transforms.ReplaceField$Value"
MASK_FIELD = "org.apache.kafka.connect.transforms.MaskField$Value"
# The project's own transforms (cdc_pipelines/connect/smt, plugin "cdc-transforms").
COMPLEX_FIELDS_TO_JSON = "io.cdcpipelines.connect.ComplexFieldsToJson"
HASH_FIELDS = "io.cdcpipelines.connect.HashFields"
RECORD_IS_TOMBSTONE = "org.apache.kafka.connect.transforms.predicates.RecordIsTombstone"

SOURCE_TIMESTAMP_FIELD = "source.ts_us"
# ExtractNewRecordState prefixes added fields with "__" and joins struct and field with "_".
UNWRAPPED_TIMESTAMP_FIELD = "__source_ts_us"
TOMBSTONE_PREDICATE = "isTombstone"
# pgjdbc sends strings untyped, so PostgreSQL casts them to numeric/inet columns.
JDBC_STRING_TYPE_PARAM = ("stringtype", "unspecified")
SINK_TIME_ZONE = "UTC"
# The Scylla connector (≥ 1.2.3, so 2.0.x) takes the logical name from topic.prefix;
# the older scylla.name is gone. Topics are <topic.prefix>.<keyspace>.<table>.
SOURCE_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "cdc.output.format": "advanced",
        "cdc.include.before": "none",
        "cdc.include.after": "full",
        # payload-before: a delete's ``before`` then carries the key the sink deletes by.
        "cdc.include.primary-key.placement": "kafka-key,payload-after,payload-before",
        "errors.tolerance": "none",
        "errors.log.enable": "true",
        "errors.log.include.messages": "false",
    }
)
# Room for a whole batch of schema-carrying JSON records in one fetch.
SINK_FETCH_BYTES = 32 * 1024 * 1024
SINK_OPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "insert.mode": "upsert",
        "primary.key.mode": "record_key",
        "delete.enabled": "true",
        "quote.identifiers": "true",
        "schema.evolution": "none",
        # Off: measured 6.9k → 8.5k events/s with distinct keys on the devstack; the
        # buffer only pays when one batch holds many changes of the same row.
        "use.reduction.buffer": "false",
        "database.time_zone": SINK_TIME_ZONE,
        "errors.tolerance": "all",
        "errors.log.enable": "true",
        "errors.log.include.messages": "false",
        "errors.deadletterqueue.context.headers.enable": "true",
    }
)


@dataclass(frozen=True)
class ConnectorConfig:
    """A connector's name and its configuration, every value a string as Connect expects."""

    name: str
    config: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))

    def as_dict(self) -> dict[str, str]:
        """A plain copy, ready to send as JSON (``PUT /connectors/{name}/config``)."""
        return dict(self.config)


def secret_reference(secrets: SecretsConfig, key: str) -> str:
    """A config-provider reference the Connect worker resolves, e.g. ``${file:/path:postgres.user}``."""
    if secrets.provider == "vault":
        return f"${{vault:{secrets.vault_path}:{key}}}"
    return f"${{file:{secrets.path}:{key}}}"


def source_connector_config(
    config: PipelineConfig,
    contact_points: Sequence[str] | None = None,
    port: int | None = None,
) -> ConnectorConfig:
    """The Scylla CDC source for every declared table.

    ``contact_points``/``port`` are the addresses *Connect* uses to reach ScyllaDB;
    by default the declaration's ``scylla`` section, else the local defaults.
    """
    hosts = contact_points or config.scylla.contact_points or (DEFAULT_SCYLLA_CONTACT_POINTS,)
    cql_port = port or config.scylla.port or DEFAULT_SCYLLA_PORT
    settings = config.connectors
    options: dict[str, str] = {
        "connector.class": SCYLLA_CONNECTOR_CLASS,
        "tasks.max": str(settings.source_tasks_max),
        "topic.prefix": settings.topic_prefix,
        "scylla.cluster.ip.addresses": ",".join(f"{host}:{cql_port}" for host in hosts),
        "scylla.table.names": ",".join(t.source for t in config.tables),
        "heartbeat.interval.ms": str(settings.heartbeat_interval_ms),
        "scylla.confidence.window.size": str(settings.confidence_window_ms),
        "scylla.query.time.window.size": str(settings.query_time_window_ms),
        "topic.creation.default.replication.factor": str(settings.topic_replication_factor),
        "topic.creation.default.partitions": str(settings.topic_partitions),
        **_json_converters(),
        **SOURCE_OPTIONS,
    }
    if config.scylla.local_dc:
        options["scylla.local.dc"] = config.scylla.local_dc
    if config.scylla.username:
        # The declaration says the cluster authenticates; Connect reads its own copy.
        options["scylla.user"] = secret_reference(
            settings.secrets, settings.secrets.scylla_user_key
        )
        options["scylla.password"] = secret_reference(
            settings.secrets, settings.secrets.scylla_password_key
        )
    return ConnectorConfig(settings.source_name, options)


def sink_omitted_columns(table: TableSpec) -> tuple[str, ...]:
    """Replicated columns the sink cannot write (maps, tuples, UDTs, …): dropped from the stream."""
    return tuple(
        c.name for c in table.replicated_columns if not column_pg_type(table, c).sink_writable
    )


def sink_connector_config(config: PipelineConfig, table: TableSpec) -> ConnectorConfig:
    """The Debezium JDBC sink writing ``table``'s topic into its PostgreSQL target."""
    _check_sink_identifiers(config, table)
    settings = config.connectors
    secrets = settings.secrets
    options: dict[str, str] = {
        "connector.class": JDBC_SINK_CONNECTOR_CLASS,
        "tasks.max": str(settings.sink_tasks_max),
        "topics": config.topic_for(table),
        "connection.url": sink_jdbc_url(settings.sink_connection_url),
        "connection.username": secret_reference(secrets, secrets.postgres_user_key),
        "connection.password": secret_reference(secrets, secrets.postgres_password_key),
        "collection.name.format": f"{table.target_schema}.{table.target_table}",
        "batch.size": str(settings.sink_batch_size),
        # The consumer hands the sink at most max.poll.records (500 by default) per put,
        # which would cap every JDBC batch at 500 rows whatever batch.size says.
        "consumer.override.max.poll.records": str(settings.sink_batch_size),
        "consumer.override.max.partition.fetch.bytes": str(SINK_FETCH_BYTES),
        "consumer.override.fetch.max.bytes": str(SINK_FETCH_BYTES),
        "errors.deadletterqueue.topic.name": config.dlq_topic_for(table),
        "errors.deadletterqueue.topic.replication.factor": str(settings.dlq_replication_factor),
        **_json_converters(),
        **SINK_OPTIONS,
        **_transforms(table, config.defaults.version_column, secrets),
    }
    return ConnectorConfig(config.sink_name_for(table), options)


def sink_connector_configs(config: PipelineConfig) -> tuple[ConnectorConfig, ...]:
    return tuple(sink_connector_config(config, t) for t in config.tables)


def connector_configs(
    config: PipelineConfig,
    contact_points: Sequence[str] | None = None,
    port: int | None = None,
) -> tuple[ConnectorConfig, ...]:
    """The source first, then one sink per table in declaration order."""
    return (source_connector_config(config, contact_points, port), *sink_connector_configs(config))


def sink_jdbc_url(url: str) -> str:
    """The declared JDBC URL with ``stringtype=unspecified`` (needed for numeric/inet columns)."""
    name, value = JDBC_STRING_TYPE_PARAM
    params = dict(parse_qsl(urlsplit(url.removeprefix("jdbc:")).query))
    if name in params:
        if params[name] != value:
            raise ConfigError(
                f"connectors.sink_connection_url sets {name}={params[name]}; the sink needs "
                f"{name}={value} to write numeric, inet and uuid values — remove the parameter"
            )
        return url
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def _json_converters() -> dict[str, str]:
    return {
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "true",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "true",
    }


def _transforms(table: TableSpec, version_column: str, secrets: SecretsConfig) -> dict[str, str]:
    dropped = [*table.exclude, *sink_omitted_columns(table)]
    masked = {
        name: mode
        for name, mode in table.mask.items()
        if name not in set(sink_omitted_columns(table))
    }
    text_masks = {
        name: mode
        for name, mode in masked.items()
        if table.column(name).cql_type.name in STRING_CARRIED
    }
    hashed_text = [name for name, mode in text_masks.items() if mode is MaskMode.HASH]
    blank_text = [name for name, mode in text_masks.items() if mode is MaskMode.REDACT]
    others = [name for name in masked if name not in text_masks]

    unless_tombstone = {"predicate": TOMBSTONE_PREDICATE, "negate": "true"}
    steps: list[tuple[str, dict[str, str]]] = []
    if any(pg_type(c.cql_type).sql == JSON_PG_TYPE for c in table.replicated_columns):
        steps.append(("json", {"type": COMPLEX_FIELDS_TO_JSON}))
    steps += [
        (
            "unwrap",
            {
                "type": EXTRACT_NEW_RECORD_STATE,
                "add.fields": SOURCE_TIMESTAMP_FIELD,
                "delete.tombstone.handling.mode": "delete-to-tombstone",
            },
        ),
        (
            "shape",
            {
                "type": REPLACE_FIELD,
                "renames": f"{UNWRAPPED_TIMESTAMP_FIELD}:{version_column}",
                **({"exclude": ",".join(dropped)} if dropped else {}),
                **unless_tombstone,
            },
        ),
    ]
    if hashed_text:
        steps.append(
            (
                "maskHashed",
                {
                    "type": HASH_FIELDS,
                    "fields": ",".join(hashed_text),
                    # salt.secret, not salt: the sink task logs its config and masks only
                    # keys ending in "secret"/"password" (HashFields.SALT_SECRET).
                    "salt.secret": secret_reference(secrets, secrets.mask_salt_key),
                    **unless_tombstone,
                },
            )
        )
    if blank_text or others:
        steps.append(
            (
                "maskRedacted",
                {"type": MASK_FIELD, "fields": ",".join(blank_text + others), **unless_tombstone},
            )
        )
    options = {"transforms": ",".join(name for name, _ in steps)}
    for name, step in steps:
        options.update({f"transforms.{name}.{key}": value for key, value in step.items()})
    options["predicates"] = TOMBSTONE_PREDICATE
    options[f"predicates.{TOMBSTONE_PREDICATE}.type"] = RECORD_IS_TOMBSTONE
    return options


def _check_sink_identifiers(config: PipelineConfig, table: TableSpec) -> None:
    names: Iterable[tuple[str, str]] = [
        ("target schema", table.target_schema),
        ("target table", table.target_table),
        ("version column", config.defaults.version_column),
        *(("column", c.name) for c in table.replicated_columns),
        *(("excluded column", name) for name in table.exclude),
    ]
    for what, name in names:
        if '"' in name:
            # The 3.6 sink quotes identifiers without doubling embedded quotes.
            raise ConfigError(
                f"{table.source}: {what} {name!r} contains a double quote, which the Debezium "
                "JDBC sink cannot quote; rename it in pipeline.yaml (the DDL and reconciliation "
                "would handle it, the streaming path cannot)"
            )
        if "${" in name:
            # Connect would treat it as a config-provider reference and substitute it.
            raise ConfigError(
                f"{table.source}: {what} {name!r} contains '${{', which Kafka Connect reads as a "
                "config-provider reference; rename it in pipeline.yaml"
            )
