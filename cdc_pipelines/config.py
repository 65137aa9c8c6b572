"""The pipeline declaration (``pipeline.yaml``): models and loader.

One file lists the replicated tables and how the streaming path and the
reconciliation treat them. Everything else (DDL, connector configs, Dagster
assets, reconciliation) is derived from the :class:`PipelineConfig` loaded here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cdc_pipelines.cqltypes import CqlType, CqlTypeSyntaxError, parse_cql_type
from cdc_pipelines.errors import ConfigError

CONFIG_ENV_VAR = "CDC_PIPELINE_CONFIG"
DEFAULT_CONFIG_PATH = "pipeline.yaml"
DEFAULT_SLICE_COUNT = 16
MAX_SLICE_COUNT = 4096
DEFAULT_VERSION_COLUMN = "_cdc_version_us"
DEFAULT_TOPIC_PREFIX = "scylla"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimestampPrecision(StrEnum):
    SECONDS = "s"
    MILLISECONDS = "ms"
    MICROSECONDS = "us"


class MaskMode(StrEnum):
    """How a masked column is transformed by a Connect transform before PostgreSQL sees it."""

    HASH = "hash"
    REDACT = "redact"


class Tolerances(_Model):
    """How close two values must be to count as equal in a reconciliation."""

    float_abs: float = Field(0.0, ge=0.0)
    float_rel: float = Field(0.0, ge=0.0)
    timestamp_precision: TimestampPrecision = TimestampPrecision.MILLISECONDS


class LagSlo(_Model):
    """The most lag a table may have before its lag check fails."""

    max_messages: int = Field(10_000, ge=0)
    max_seconds: float = Field(60.0, gt=0.0)


class Expectation(_Model):
    """A data-quality expectation, run with Great Expectations on the target table."""

    kind: Literal["not_null", "unique", "between", "in_set", "matches_regex", "row_count_between"]
    column: str | None = None
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    regex: str | None = None
    side: Literal["target", "source"] = "target"

    @model_validator(mode="after")
    def _arguments_fit_kind(self) -> Expectation:
        needs_column = self.kind != "row_count_between"
        if needs_column and not self.column:
            raise ValueError(f"expectation {self.kind!r} needs a 'column'")
        if self.kind in ("between", "row_count_between") and self.min is None and self.max is None:
            raise ValueError(f"expectation {self.kind!r} needs 'min' and/or 'max'")
        if self.kind == "in_set" and not self.values:
            raise ValueError("expectation 'in_set' needs a non-empty 'values' list")
        if self.kind == "matches_regex":
            if not self.regex:
                raise ValueError("expectation 'matches_regex' needs a 'regex'")
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"'regex' is not a valid regular expression: {exc}") from None
        return self


class ColumnSpec(_Model):
    """One column of a replicated table."""

    name: str
    type: str
    target_type: str | None = None

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        return _identifier(value, "column name")

    @field_validator("type")
    @classmethod
    def _type_parses(cls, value: str) -> str:
        try:
            parse_cql_type(value)
        except CqlTypeSyntaxError as exc:
            raise ValueError(f"not a CQL type: {exc}") from None
        return value

    @cached_property
    def cql_type(self) -> CqlType:
        return parse_cql_type(self.type)


def _identifier(value: str, what: str) -> str:
    if not value or not value.strip():
        raise ValueError(f"{what} is empty")
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL character")
    if len(value.encode()) > 63:
        raise ValueError(f"{what} {value!r} is longer than PostgreSQL's 63-byte identifier limit")
    return value


def _qualified(value: str, what: str) -> tuple[str, str]:
    parts = value.split(".")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"{what} {value!r} must be written as 'namespace.table'")
    return parts[0], parts[1]


class TableSpec(_Model):
    """A replicated table: ScyllaDB source, PostgreSQL target and how to check them."""

    source: str
    target: str
    partition_key: tuple[str, ...]
    clustering_key: tuple[str, ...] = ()
    columns: tuple[ColumnSpec, ...]
    exclude: tuple[str, ...] = ()
    mask: Mapping[str, MaskMode] = Field(default_factory=dict)
    slices: int | None = Field(None, ge=1, le=MAX_SLICE_COUNT)
    tolerances: Tolerances | None = None
    expectations: tuple[Expectation, ...] = ()
    lag_slo: LagSlo | None = None
    owners: tuple[str, ...] = ()
    description: str | None = None

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_from_mapping(cls, value: Any) -> Any:
        # Columns may be written as an ordered mapping ``name: type`` or
        # ``name: {type: …, target_type: …}``; both become ColumnSpec.
        if isinstance(value, Mapping):
            columns = []
            for name, spec in value.items():
                if isinstance(spec, Mapping):
                    columns.append({"name": str(name), **spec})
                else:
                    columns.append({"name": str(name), "type": spec})
            return columns
        return value

    @field_validator("source")
    @classmethod
    def _source_is_qualified(cls, value: str) -> str:
        _qualified(value, "source")
        return value

    @field_validator("target")
    @classmethod
    def _target_is_qualified(cls, value: str) -> str:
        schema, table = _qualified(value, "target")
        _identifier(schema, "target schema")
        _identifier(table, "target table")
        return value

    @model_validator(mode="after")
    def _keys_and_columns_agree(self) -> TableSpec:
        names = [c.name for c in self.columns]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"columns {duplicates} are declared more than once")
        if not self.partition_key:
            raise ValueError("partition_key must name at least one column")
        known = set(names)
        for field_name, listed in (
            ("partition_key", self.partition_key),
            ("clustering_key", self.clustering_key),
            ("exclude", self.exclude),
            ("mask", tuple(self.mask)),
        ):
            unknown = [n for n in listed if n not in known]
            if unknown:
                raise ValueError(f"{field_name} names undeclared columns {unknown}")
        keys = set(self.partition_key) | set(self.clustering_key)
        if len(keys) != len(self.partition_key) + len(self.clustering_key):
            raise ValueError("a column appears twice across partition_key and clustering_key")
        for forbidden, what in ((self.exclude, "excluded"), (tuple(self.mask), "masked")):
            clash = sorted(keys & set(forbidden))
            if clash:
                raise ValueError(f"key columns {clash} cannot be {what}")
        for expectation in self.expectations:
            if expectation.column is not None and expectation.column not in known:
                raise ValueError(
                    f"expectation {expectation.kind!r} names undeclared column {expectation.column!r}"
                )
        return self

    @property
    def keyspace(self) -> str:
        return _qualified(self.source, "source")[0]

    @property
    def table(self) -> str:
        return _qualified(self.source, "source")[1]

    @property
    def target_schema(self) -> str:
        return _qualified(self.target, "target")[0]

    @property
    def target_table(self) -> str:
        return _qualified(self.target, "target")[1]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.partition_key + self.clustering_key

    @property
    def replicated_columns(self) -> tuple[ColumnSpec, ...]:
        """Columns that reach PostgreSQL (declared minus excluded), in declaration order."""
        excluded = set(self.exclude)
        return tuple(c for c in self.columns if c.name not in excluded)

    @property
    def compared_columns(self) -> tuple[ColumnSpec, ...]:
        """Non-key replicated columns whose values the reconciliation compares (masked ones are not comparable)."""
        skip = set(self.primary_key) | set(self.mask)
        return tuple(c for c in self.replicated_columns if c.name not in skip)

    def column(self, name: str) -> ColumnSpec:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


class ScyllaConnection(_Model):
    contact_points: tuple[str, ...] | None = None
    port: int | None = Field(None, ge=1, le=65535)
    local_dc: str | None = None
    username: str | None = None
    password: str | None = None
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    fetch_size: int = Field(5000, ge=100, le=100_000)
    concurrency: int = Field(8, ge=1, le=256)


class SecretsConfig(_Model):
    """How Connect resolves credentials: a config provider reference, never an inline secret."""

    provider: Literal["file", "vault"] = "file"
    path: str = "/etc/kafka-connect/secrets/postgres.properties"
    vault_url: str | None = None
    vault_path: str | None = None


class ConnectorSettings(_Model):
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    source_name: str = "scylla-cdc-source"
    sink_name_prefix: str = "pg-sink"
    source_tasks_max: int = Field(2, ge=1)
    sink_tasks_max: int = Field(1, ge=1)
    sink_batch_size: int = Field(2000, ge=1)
    dlq_topic: str = "cdc-dlq"
    heartbeat_interval_ms: int = Field(10_000, ge=0)
    confidence_window_ms: int = Field(5_000, ge=0)
    query_time_window_ms: int = Field(10_000, ge=1)
    sink_connection_url: str = "jdbc:postgresql://127.0.0.1:5432/cdc"
    secrets: SecretsConfig = SecretsConfig()


class Defaults(_Model):
    slices: int = Field(DEFAULT_SLICE_COUNT, ge=1, le=MAX_SLICE_COUNT)
    tolerances: Tolerances = Tolerances()
    lag_slo: LagSlo = LagSlo()
    version_column: str = DEFAULT_VERSION_COLUMN


class PipelineConfig(_Model):
    """The whole declaration."""

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    scylla: ScyllaConnection = ScyllaConnection()
    connectors: ConnectorSettings = ConnectorSettings()
    user_types: Mapping[str, Mapping[str, str]] = Field(default_factory=dict)
    tables: tuple[TableSpec, ...]

    @model_validator(mode="after")
    def _tables_unique(self) -> PipelineConfig:
        for attr in ("source", "target"):
            seen = [getattr(t, attr) for t in self.tables]
            dupes = sorted({s for s in seen if seen.count(s) > 1})
            if dupes:
                raise ValueError(f"tables declare the same {attr} more than once: {dupes}")
        for udt, fields in self.user_types.items():
            for field_name, type_text in fields.items():
                try:
                    parse_cql_type(type_text)
                except CqlTypeSyntaxError as exc:
                    raise ValueError(f"user type {udt!r} field {field_name!r}: {exc}") from None
        for table in self.tables:
            for column in table.columns:
                for udt in _udt_names(column.cql_type):
                    if udt not in self.user_types:
                        raise ValueError(
                            f"table {table.source!r} column {column.name!r} uses user type "
                            f"{udt!r}, which is not declared under user_types"
                        )
        return self

    def table(self, source: str) -> TableSpec:
        for table in self.tables:
            if table.source == source:
                return table
        known = ", ".join(t.source for t in self.tables) or "none"
        raise ConfigError(f"table {source!r} is not declared; declared tables: {known}")

    def slices_for(self, table: TableSpec) -> int:
        return table.slices or self.defaults.slices

    def tolerances_for(self, table: TableSpec) -> Tolerances:
        return table.tolerances or self.defaults.tolerances

    def lag_slo_for(self, table: TableSpec) -> LagSlo:
        return table.lag_slo or self.defaults.lag_slo

    def topic_for(self, table: TableSpec) -> str:
        return f"{self.connectors.topic_prefix}.{table.keyspace}.{table.table}"

    def sink_name_for(self, table: TableSpec) -> str:
        return f"{self.connectors.sink_name_prefix}-{table.keyspace}-{table.table}"


def _udt_names(cql_type: CqlType) -> list[str]:
    names = [cql_type.udt_name] if cql_type.udt_name else []
    for param in cql_type.params:
        names.extend(_udt_names(param))
    return names


def interpolate_env(text: str, environ: Mapping[str, str], source: str) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; an unset name without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        line = text.count("\n", 0, match.start()) + 1
        raise ConfigError(
            f"{source}:{line}: environment variable {name} is not set; "
            f"export it or write ${{{name}:-default}}"
        )

    return _ENV_REF.sub(replace, text)


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    """The declaration's path: the argument, else ``$CDC_PIPELINE_CONFIG``, else ``./pipeline.yaml``."""
    return Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    """Load and validate the declaration; every failure is a :class:`ConfigError` naming file and field."""
    config_path = resolve_config_path(path)
    try:
        raw_text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{config_path}: no such file; pass --config PATH or set {CONFIG_ENV_VAR}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: cannot be read: {exc}") from None
    return parse_config(raw_text, str(config_path), environ)


def parse_config(
    raw_text: str, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> PipelineConfig:
    text = interpolate_env(raw_text, os.environ if environ is None else environ, source)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(document, Mapping):
        raise ConfigError(
            f"{source}: the declaration must be a mapping with a 'tables' list, "
            f"got {type(document).__name__}"
        )
    try:
        return PipelineConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, document, exc)) from None


def _format_validation_error(source: str, document: Any, exc: ValidationError) -> str:
    lines = [f"{source}: invalid declaration ({exc.error_count()} problem(s)):"]
    for error in exc.errors():
        path = _field_path(document, error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check its spelling and where it is indented)"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def _field_path(document: Any, loc: tuple[int | str, ...]) -> str:
    # Turn pydantic's location into the path a user reads in the YAML file, e.g.
    # tables[0](shop.orders).columns.total.type
    parts: list[str] = []
    node = document
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, Mapping) and "source" in node:
                    label += f"({node['source']})"
            parts.append(label)
        else:
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return "".join(parts) or "(document)"
