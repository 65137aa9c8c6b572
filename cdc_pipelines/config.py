"""The pipeline declaration (``pipeline.yaml``): models and loader.

One file lists the replicated tables and how the streaming path and the
reconciliation treat them. Everything else (DDL, connector configs, Dagster
assets, reconciliation) is derived from the :class:`PipelineConfig` loaded here.
A bad file fails with a :class:`ConfigError` naming the file, the field as it
reads in the YAML (``tables[0](shop.orders).columns.total.type``) and the fix.
"""

from __future__ import annotations

import difflib
import gc
import os
import re
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cdc_pipelines.cqltypes import SCALAR_TYPES, CqlType, CqlTypeSyntaxError, parse_cql_type
from cdc_pipelines.errors import ConfigError

CONFIG_ENV_VAR = "CDC_PIPELINE_CONFIG"
DEFAULT_CONFIG_PATH = "pipeline.yaml"
DEFAULT_SLICE_COUNT = 16
MAX_SLICE_COUNT = 4096
DEFAULT_VERSION_COLUMN = "_cdc_version_us"
DEFAULT_TOPIC_PREFIX = "scylla"
DEFAULT_SECRETS_FILE = "/etc/kafka-connect/secrets/postgres.properties"
DEFAULT_VAULT_SECRET_PATH = "secret/data/cdc/connect"  # KV v2 at secret/, as the stacks store it
# PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1).
PG_IDENTIFIER_MAX_BYTES = 63
# Cassandra/ScyllaDB keyspace and table names: letters, digits, underscore, at most 48.
CQL_NAME = re.compile(r"^[A-Za-z0-9_]{1,48}$")
KAFKA_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# A target_type override is pasted into DDL, so only plain type syntax is accepted:
# words, an optional (precision[, scale]), trailing words, array brackets.
PG_TYPE_SYNTAX = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*( [A-Za-z_][A-Za-z0-9_]*)*"
    r"( ?\( *\d+ *(, *\d+ *)?\))?( [A-Za-z_][A-Za-z0-9_]*)*( ?\[\])*$"
)
# Kafka Connect list options (ReplaceField, MaskField) split on commas and
# ReplaceField's renames on colons, so such names cannot be passed through them.
CONNECT_LIST_SEPARATORS = (",",)
CONNECT_RENAME_SEPARATORS = (",", ":")
SECRET_FIELDS: tuple[tuple[str, ...], ...] = (("scylla", "password"),)
KEY_FORBIDDEN_TYPES = frozenset({"duration", "counter"})
# What the stream's mask transforms can mask: types the connector sends as text (HashFields
# or MaskField), numbers, booleans and times (MaskField's zeros); see rows.mask.
MASKABLE_TYPES = frozenset(
    {
        "text",
        "ascii",
        "varchar",
        "uuid",
        "timeuuid",
        "varint",
        "decimal",
        "inet",
        "duration",
        "int",
        "bigint",
        "smallint",
        "tinyint",
        "float",
        "double",
        "boolean",
        "timestamp",
        "date",
        "time",
    }
)
# String-carried types whose connector text (Java's BigDecimal, InetAddress and duration
# forms) differs from what reconciliation can rebuild: hashing them is refused.
HASH_TEXT_DIFFERS = frozenset({"decimal", "inet", "duration"})
# CQL native protocol: ScyllaDB speaks v4 (v5 framing in the Python driver has dropped
# connections with "CRC mismatch on header"); 3 serves old clusters, 5 Cassandra 4+.
DEFAULT_PROTOCOL_VERSION = 4
SINGLE_REPLICA_LEVELS = frozenset({"ONE", "LOCAL_ONE"})
PROTOCOL_VERSIONS = (3, 4, 5)
# Names the reconciliation gives to the columns it adds next to a table's own, so a declared
# column must not take them (unit/test_config.py checks they match where they are defined):
# rows.canonical.ROW_HASH_COLUMN and postgres.target_index.TOKEN_COLUMN sit beside every
# canonical column (key, compared and version columns);
INDEX_COLUMNS = frozenset({"_cdc_row_hash", "_token"})
# reconcile.diff_step.KIND_COLUMN/DIFFERING_COLUMN and reconcile.diff.SOURCE_VALUES/
# TARGET_VALUES sit beside the key columns of the candidate and mismatch tables;
CANDIDATE_COLUMNS = frozenset({"kind", "differing_columns", "source_values", "target_values"})
# postgres.key_reads.POSITION_COLUMN sits beside the canonical columns of a target re-read (a
# declared column of that name is stepped around, the version column is not).
VERIFY_POSITION_COLUMN = "_cdc_verify_position"
# Characters no column name may hold: control, format (zero-width space, BOM, bidi
# overrides), surrogate and private-use characters, line and paragraph separators. They are
# invisible or undefined, so a name holding one looks like another in every message and
# client; ZWJ/ZWNJ are kept between letters, where scripts such as Persian need them.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
JOINERS = frozenset({"\u200c", "\u200d"})
# A CQL type nests a handful of levels in practice; deeper text is refused before parsing.
MAX_TYPE_NESTING = 32
# YAML: documents deeper than this are refused (a declaration needs about eight levels), and
# aliases may add at most this many nodes, or as many as the document has, whichever is more.
MAX_YAML_DEPTH = 64
YAML_ALIAS_NODE_ALLOWANCE = 100_000
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WHOLE_ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$")
_YAML_STR_TAG = "tag:yaml.org,2002:str"
_YAML_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _error_at(reason: str, *subpath: str | int) -> PydanticCustomError:
    """A validation error located below the model that raises it (rendered by the loader)."""
    return PydanticCustomError("declaration", "{reason}", {"reason": reason, "subpath": subpath})


class TimestampPrecision(StrEnum):
    SECONDS = "s"
    MILLISECONDS = "ms"
    MICROSECONDS = "us"


class MaskMode(StrEnum):
    """How a masked column is transformed by a Connect transform before PostgreSQL sees it.

    Neither Kafka nor Debezium ships a hashing transform, so ``hash`` is delivered
    as a fixed replacement text (see :mod:`cdc_pipelines.connect.configs`).
    """

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


class CanarySpec(_Model):
    """Marks a table as the end-to-end canary: on a schedule one row (partition key ``key``)
    is written at the source with ``column`` set to its write time in µs, and PostgreSQL is
    polled until the sink has applied that value. The table is declared, created and
    streamed like any other; only its single-``text``-key, ``bigint``-column shape is fixed.
    """

    key: str = Field("canary", min_length=1)
    column: str = "written_at_us"
    interval_s: int = Field(60, ge=10, le=3600, strict=True)
    """How often the probe runs (the canary sensor's interval)."""
    timeout_s: float = Field(60.0, gt=0.0, le=600.0)
    """How long a probe waits for the row in PostgreSQL."""
    stale_after_s: float = Field(300.0, gt=0.0)
    """The check fails with ERROR once the last arrival is older than this (the alert's 5 min)."""
    emulate_cdc: bool = False
    """Also publish the row's change event (the devstack's Cassandra has no CDC log)."""


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
            raise _error_at(f"expectation {self.kind!r} needs a 'column'", "column")
        if not needs_column and self.column:
            raise _error_at("expectation 'row_count_between' takes no 'column'", "column")
        if self.kind in ("between", "row_count_between"):
            if self.min is None and self.max is None:
                raise _error_at(f"expectation {self.kind!r} needs 'min' and/or 'max'", "min")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise _error_at(f"'min' ({self.min}) is greater than 'max' ({self.max})", "min")
        if self.kind == "in_set" and not self.values:
            raise _error_at("expectation 'in_set' needs a non-empty 'values' list", "values")
        if self.kind == "matches_regex":
            if not self.regex:
                raise _error_at("expectation 'matches_regex' needs a 'regex'", "regex")
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise _error_at(f"not a valid regular expression: {exc}", "regex") from None
        return self


def _identifier(value: str, what: str) -> str:
    """A PostgreSQL identifier: anything quotable (quotes, reserved words, unicode, spaces)."""
    if not value:
        raise ValueError(f"{what} is empty")
    if "\x00" in value:
        raise ValueError(f"{what} {value!r} contains a NUL character, which PostgreSQL rejects")
    size = len(value.encode())
    if size > PG_IDENTIFIER_MAX_BYTES:
        raise ValueError(
            f"{what} {value!r} is {size} bytes, longer than PostgreSQL's "
            f"{PG_IDENTIFIER_MAX_BYTES}-byte identifier limit; choose a shorter name"
        )
    return value


def _visible(value: str, what: str) -> None:
    if value.isprintable():  # False for every invisible category (and for spaces but ' ')
        return
    for i, char in enumerate(value):
        if unicodedata.category(char) not in INVISIBLE_CATEGORIES:
            continue
        if (
            char in JOINERS
            and 0 < i < len(value) - 1
            and all(unicodedata.category(c)[0] in "LM" for c in (value[i - 1], value[i + 1]))
        ):
            continue
        label = unicodedata.name(char, "a control character")
        raise ValueError(
            f"{what} {value!r} contains U+{ord(char):04X} ({label}) at position {i}, an "
            "invisible character: the name would look like another one in every message and "
            "SQL client, and such characters are usually pasted by accident; remove it from "
            "the name (and rename the column at the source if it really holds one)"
        )


def _qualified(value: str, what: str) -> tuple[str, str]:
    parts = value.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"{what} {value!r} must be written as 'namespace.table' (one dot)")
    return parts[0], parts[1]


def _without_separators(name: str, what: str, separators: tuple[str, ...]) -> None:
    bad = [s for s in separators if s in name]
    if bad:
        raise ValueError(
            f"{what} {name!r} contains {' and '.join(repr(b) for b in bad)}, which Kafka Connect's "
            "list options split on; rename the column"
        )
    if name[:1].isspace() or name[-1:].isspace():
        raise ValueError(
            f"{what} {name!r} starts or ends with whitespace, which Kafka Connect's list "
            "options trim away, so the transform would miss the column; rename the column"
        )


def cql_type_of(text: str) -> CqlType:
    """``parse_cql_type`` for declaration text, memoized (a large declaration repeats a few
    types thousands of times) and refusing nesting deeper than :data:`MAX_TYPE_NESTING`."""
    return _parsed_type(text)


@lru_cache(maxsize=4096)
def _parsed_type(text: str) -> CqlType:
    depth = deepest = 0
    for char in text:
        depth += (char == "<") - (char == ">")
        deepest = max(deepest, depth)
    if deepest > MAX_TYPE_NESTING:
        raise CqlTypeSyntaxError(
            f"the type nests {deepest} levels deep, more than {MAX_TYPE_NESTING}; "
            "declare a flatter type"
        )
    return parse_cql_type(text)


def _has_counter(cql_type: CqlType) -> bool:
    return cql_type.name == "counter" or any(_has_counter(p) for p in cql_type.params)


class ColumnSpec(_Model):
    """One column of a replicated table."""

    name: str
    type: str
    target_type: str | None = None

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, value: str) -> str:
        _identifier(value, "column name")
        _visible(value, "column name")
        return value

    @field_validator("type")
    @classmethod
    def _type_parses(cls, value: str) -> str:
        try:
            cql_type_of(value)
        except CqlTypeSyntaxError as exc:
            raise ValueError(f"not a CQL type: {exc}") from None
        return value

    @field_validator("target_type")
    @classmethod
    def _target_type_is_plain(cls, value: str | None) -> str | None:
        if value is not None and not PG_TYPE_SYNTAX.match(value.strip()):
            raise ValueError(
                f"{value!r} is not a plain PostgreSQL type name (e.g. 'numeric(38, 10)', "
                "'text[]', 'timestamp(3) with time zone')"
            )
        return value.strip() if value is not None else None

    @cached_property
    def cql_type(self) -> CqlType:
        return cql_type_of(self.type)


class TableSpec(_Model):
    """A replicated table: ScyllaDB source, PostgreSQL target and how to check them."""

    source: str
    target: str
    partition_key: tuple[str, ...]
    clustering_key: tuple[str, ...] = ()
    columns: tuple[ColumnSpec, ...]
    exclude: tuple[str, ...] = ()
    mask: Mapping[str, MaskMode] = Field(default_factory=dict)
    # strict: YAML's `true` would otherwise be taken as 1 slice
    slices: int | None = Field(None, ge=1, le=MAX_SLICE_COUNT, strict=True)
    tolerances: Tolerances | None = None
    expectations: tuple[Expectation, ...] = ()
    lag_slo: LagSlo | None = None
    owners: tuple[str, ...] = ()
    description: str | None = None
    canary: CanarySpec | None = None

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_from_mapping(cls, value: Any) -> Any:
        # Columns may be written as an ordered mapping ``name: type`` or
        # ``name: {type: …, target_type: …}``; both become ColumnSpec.
        if isinstance(value, Mapping):
            columns: list[Any] = []
            for name, spec in value.items():
                if isinstance(spec, Mapping):
                    columns.append({"name": name, **spec})
                else:
                    columns.append({"name": name, "type": spec})
            return columns
        return value

    @field_validator("source")
    @classmethod
    def _source_is_qualified(cls, value: str) -> str:
        keyspace, table = _qualified(value, "source")
        for part, what in ((keyspace, "keyspace"), (table, "table")):
            if not CQL_NAME.match(part):
                raise ValueError(
                    f"source {what} {part!r} is not a ScyllaDB name (letters, digits and "
                    "underscores, at most 48)"
                )
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
        index = {name: i for i, name in reversed(list(enumerate(names)))}
        for i, name in enumerate(names):
            if index[name] != i:
                raise _error_at(f"column {name!r} is declared more than once", "columns", i)
        for i, declared in enumerate(self.columns):
            if "counter" in declared.type.lower() and _has_counter(declared.cql_type):
                raise _error_at(
                    f"column {declared.name!r} is a counter: ScyllaDB cannot enable CDC on a table "
                    "with counter columns (scylladb/scylladb#6553), so no change of this table "
                    "would ever reach PostgreSQL, and a counter has no WRITETIME to version its "
                    "rows by; leave this table out of pipeline.yaml",
                    "columns",
                    i,
                    "type",
                )
        if not self.partition_key:
            raise _error_at("must name at least one column", "partition_key")
        listed: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("partition_key", self.partition_key),
            ("clustering_key", self.clustering_key),
            ("exclude", self.exclude),
            ("mask", tuple(self.mask)),
        )
        for field_name, names_listed in listed:
            for name in names_listed:
                if name not in index:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = (
                        f"; did you mean {close[0]!r}?" if close else "; declare it under columns"
                    )
                    raise _error_at(f"names undeclared column {name!r}{hint}", field_name)
        seen: set[str] = set()
        for field_name, key_names in listed[:2]:
            for name in key_names:
                if name in seen:
                    raise _error_at(f"column {name!r} appears twice in the primary key", field_name)
                seen.add(name)
                key_type = self.columns[index[name]].cql_type
                if key_type.name in KEY_FORBIDDEN_TYPES or (
                    key_type.name in ("list", "set", "map", "udt") and not key_type.frozen
                ):
                    raise _error_at(
                        f"key column {name!r} has type {key_type}, which cannot be part of a "
                        "primary key (use a frozen<…> type or another column)",
                        field_name,
                    )
        for field_name, forbidden, what in (
            ("exclude", self.exclude, "excluded"),
            ("mask", tuple(self.mask), "masked"),
        ):
            for name in forbidden:
                if name in seen:
                    raise _error_at(
                        f"key column {name!r} cannot be {what}: the key identifies the row in "
                        "PostgreSQL; remove it from this list",
                        field_name,
                    )
                try:
                    _without_separators(name, f"{what} column", CONNECT_LIST_SEPARATORS)
                except ValueError as exc:
                    raise _error_at(str(exc), field_name) from None
        clash = sorted(set(self.exclude) & set(self.mask))
        if clash:
            raise _error_at(f"columns {clash} are both excluded and masked; keep one", "mask")
        for name, mode in self.mask.items():
            masked_type = self.columns[index[name]].cql_type.name
            if masked_type not in MASKABLE_TYPES:
                raise _error_at(
                    f"column {name!r} is a {masked_type}, which the stream's mask transforms "
                    "cannot mask (Kafka's MaskField fails on it); exclude it instead",
                    "mask",
                )
            if mode is MaskMode.HASH and masked_type in HASH_TEXT_DIFFERS:
                raise _error_at(
                    f"column {name!r} is a {masked_type}: the connector sends it as text whose "
                    "exact form (scientific notation, long IPv6, duration units) reconciliation "
                    "cannot reproduce, so its hash could not be compared; use redact or exclude",
                    "mask",
                )
        excluded = set(self.exclude)
        for i, declared in enumerate(self.columns):
            if declared.name in INDEX_COLUMNS and declared.name not in excluded:
                raise _error_at(
                    f"column {declared.name!r} has the name of a column the reconciliation adds "
                    "to its target index; rename the column (in ScyllaDB and PostgreSQL) or "
                    "exclude it",
                    "columns",
                    i,
                )
            if declared.name in CANDIDATE_COLUMNS and declared.name in seen:
                raise _error_at(
                    f"key column {declared.name!r} has the name of a column the reconciliation "
                    "adds next to the key columns of its discrepancy candidates; rename the key "
                    "column (in ScyllaDB and PostgreSQL)",
                    "columns",
                    i,
                )
        for i, expectation in enumerate(self.expectations):
            column = expectation.column
            if column is not None and column not in index:
                raise _error_at(f"names undeclared column {column!r}", "expectations", i, "column")
            if column in self.exclude:
                reason = (
                    "it does not exist in the target"
                    if expectation.side == "target"
                    else "its raw values must not reach Dagster through the failing samples "
                    "of a source-side expectation"
                )
                raise _error_at(
                    f"column {column!r} is excluded, so {reason}; drop the expectation "
                    "(or stop excluding the column)",
                    "expectations",
                    i,
                    "column",
                )
            if column in self.mask and expectation.side == "source":
                raise _error_at(
                    f"column {column!r} is masked: a source-side expectation would put its raw "
                    "values into Dagster through the failing samples; check it on the target "
                    "(side: target sees the masked values) or drop the expectation",
                    "expectations",
                    i,
                    "column",
                )
        if self.canary is not None:
            self._canary_shape(self.canary, index)
        return self

    def _canary_shape(self, canary: CanarySpec, index: Mapping[str, int]) -> None:
        """A canary table has one ``text`` key column and a replicated ``bigint`` column."""
        if len(self.partition_key) != 1 or self.clustering_key:
            raise _error_at(
                "a canary table has exactly one key column (the partition key) and no "
                "clustering key",
                "canary",
            )
        if self.columns[index[self.partition_key[0]]].cql_type.name not in ("text", "varchar"):
            raise _error_at(
                f"the canary's key column {self.partition_key[0]!r} must be text", "canary"
            )
        if canary.column not in index:
            raise _error_at(
                f"names undeclared column {canary.column!r}; declare it as bigint",
                "canary",
                "column",
            )
        if self.columns[index[canary.column]].cql_type.name != "bigint" or canary.column in (
            *self.primary_key,
            *self.exclude,
            *self.mask,
        ):
            raise _error_at(
                f"column {canary.column!r} must be a bigint that is replicated as is (not a "
                "key, excluded or masked): it carries the write time PostgreSQL is polled for",
                "canary",
                "column",
            )

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
    password: str | None = Field(None, repr=False)
    consistency: Literal["ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "ALL"] = "LOCAL_QUORUM"
    fetch_size: int = Field(5000, ge=100, le=100_000)
    concurrency: int = Field(8, ge=1, le=256)
    # strict: YAML's `true` would otherwise be taken as version 1
    protocol_version: int = Field(DEFAULT_PROTOCOL_VERSION, strict=True)
    # A row is deleted from the target only after a read at this level finds it gone too.
    delete_consistency: Literal[
        "ONE", "LOCAL_ONE", "QUORUM", "LOCAL_QUORUM", "EACH_QUORUM", "ALL"
    ] = "QUORUM"
    allow_single_replica_deletes: bool = Field(False, strict=True)

    @model_validator(mode="after")
    def _deletes_ask_a_quorum(self) -> ScyllaConnection:
        if (
            self.delete_consistency in SINGLE_REPLICA_LEVELS
            and not self.allow_single_replica_deletes
        ):
            raise _error_at(
                f"{self.delete_consistency} asks one replica, and a replica that missed a write "
                "would confirm a row as deleted; use QUORUM (the default) or LOCAL_QUORUM, or "
                "set allow_single_replica_deletes: true to accept that risk",
                "delete_consistency",
            )
        return self

    @field_validator("protocol_version")
    @classmethod
    def _protocol_the_source_speaks(cls, value: int) -> int:
        if value not in PROTOCOL_VERSIONS:
            raise ValueError(
                f"{value} is not a CQL native protocol version the driver can use with ScyllaDB; "
                f"write 4 (ScyllaDB's, the default), 3 for an older cluster or 5 for Cassandra "
                "4 and later"
            )
        return value


class SecretsConfig(_Model):
    """How Connect resolves credentials: a config-provider reference, never an inline secret.

    ``vault`` (the default) reads ``vault_path`` with a provider registered as ``vault`` in
    the worker (``${vault:<vault_path>:<key>}``; the project's VaultConfigProvider), so the
    secrets live in Vault only. ``file`` reads ``path`` with Kafka's FileConfigProvider
    (``${file:<path>:<key>}``), for workers that cannot reach Vault: the secrets are then
    also in that file, outside Vault's control.
    """

    provider: Literal["file", "vault"] = "vault"
    path: str = DEFAULT_SECRETS_FILE
    vault_url: str | None = None
    vault_path: str | None = DEFAULT_VAULT_SECRET_PATH
    postgres_user_key: str = "postgres.user"
    postgres_password_key: str = "postgres.password"
    mask_salt_key: str = "mask.salt"
    scylla_user_key: str = "scylla.user"
    scylla_password_key: str = "scylla.password"

    @model_validator(mode="after")
    def _vault_has_path(self) -> SecretsConfig:
        if "path" in self.model_fields_set and "provider" not in self.model_fields_set:
            raise _error_at(
                "a secrets file path without a provider: the provider is now 'vault' by "
                "default, so the file would be ignored; write provider: file to keep reading "
                "it, or remove path and store the secrets in Vault",
                "provider",
            )
        if self.provider == "vault" and not self.vault_path:
            raise _error_at("provider 'vault' needs the secret's path in Vault", "vault_path")
        return self


class ConnectorSettings(_Model):
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    source_name: str = "scylla-cdc-source"
    sink_name_prefix: str = "pg-sink"
    source_tasks_max: int = Field(2, ge=1)
    sink_tasks_max: int = Field(1, ge=1)
    sink_batch_size: int = Field(2000, ge=1)
    # Prefix of the per-table dead-letter topics: <dlq_topic>.<keyspace>.<table>.
    dlq_topic: str = "cdc-dlq"
    dlq_replication_factor: int = Field(1, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    topic_partitions: int = Field(3, ge=1)
    # The Scylla connector needs heartbeats to advance its offsets; 0 is rejected.
    heartbeat_interval_ms: int = Field(10_000, ge=1)
    confidence_window_ms: int = Field(5_000, ge=0)
    query_time_window_ms: int = Field(10_000, ge=1)
    sink_connection_url: str = "jdbc:postgresql://127.0.0.1:5432/cdc"
    secrets: SecretsConfig = SecretsConfig()

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_logical_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_]+$", value):
            raise ValueError(
                f"{value!r} is not a valid Scylla logical name (letters, digits, underscores)"
            )
        return value

    @field_validator("dlq_topic")
    @classmethod
    def _dlq_is_topic(cls, value: str) -> str:
        if not KAFKA_TOPIC_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a Kafka topic name (letters, digits, '.', '_', '-')"
            )
        return value

    @field_validator("source_name", "sink_name_prefix")
    @classmethod
    def _connector_name(cls, value: str) -> str:
        if not value or "/" in value or value.strip() != value:
            raise ValueError(
                f"{value!r} cannot name a connector (empty, '/' or surrounding spaces)"
            )
        return value

    @field_validator("sink_connection_url")
    @classmethod
    def _jdbc_url(cls, value: str) -> str:
        if not value.startswith("jdbc:postgresql://"):
            raise ValueError(f"{value!r} is not a PostgreSQL JDBC URL (jdbc:postgresql://host/db)")
        if re.search(r"[?&](password|user)=", value):
            raise ValueError(
                "the JDBC URL carries credentials; remove user=/password= and put them in the "
                "Connect secrets file (connectors.secrets)"
            )
        return value


class Defaults(_Model):
    slices: int = Field(DEFAULT_SLICE_COUNT, ge=1, le=MAX_SLICE_COUNT, strict=True)
    tolerances: Tolerances = Tolerances()
    lag_slo: LagSlo = LagSlo()
    version_column: str = DEFAULT_VERSION_COLUMN

    @field_validator("version_column")
    @classmethod
    def _version_column_name(cls, value: str) -> str:
        _identifier(value, "version column")
        _visible(value, "version column")
        _without_separators(value, "version column", CONNECT_RENAME_SEPARATORS)
        if value in INDEX_COLUMNS or value == VERIFY_POSITION_COLUMN:
            raise ValueError(
                f"{value!r} is the name of a column the reconciliation adds next to the "
                f"version column; choose another name (the default is {DEFAULT_VERSION_COLUMN!r})"
            )
        return value


class PipelineConfig(_Model):
    """The whole declaration."""

    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    scylla: ScyllaConnection = ScyllaConnection()
    connectors: ConnectorSettings = ConnectorSettings()
    user_types: Mapping[str, Mapping[str, str]] = Field(default_factory=dict)
    tables: tuple[TableSpec, ...]

    @field_validator("tables")
    @classmethod
    def _some_tables(cls, value: tuple[TableSpec, ...]) -> tuple[TableSpec, ...]:
        if not value:
            raise ValueError("the list is empty; declare at least one replicated table")
        return value

    @field_validator("user_types")
    @classmethod
    def _user_type_fields_parse(
        cls, value: Mapping[str, Mapping[str, str]]
    ) -> Mapping[str, Mapping[str, str]]:
        for udt, fields in value.items():
            if not fields:
                raise _error_at(f"user type {udt!r} declares no fields", udt)
            for field_name, type_text in fields.items():
                try:
                    field_type = cql_type_of(type_text)
                except CqlTypeSyntaxError as exc:
                    raise _error_at(f"not a CQL type: {exc}", udt, field_name) from None
                for nested in _udt_names(field_type):
                    if nested not in value:
                        raise _error_at(
                            _unknown_type_message(nested),
                            udt,
                            field_name,
                        )
        return value

    @model_validator(mode="after")
    def _tables_agree(self) -> PipelineConfig:
        for attr in ("source", "target"):
            first: dict[str, int] = {}
            for i, table in enumerate(self.tables):
                value = getattr(table, attr)
                if value in first:
                    raise _error_at(
                        f"{value!r} is already declared by tables[{first[value]}]; each table "
                        f"must have its own {attr}",
                        "tables",
                        i,
                        attr,
                    )
                first[value] = i
        version_column = self.defaults.version_column
        for i, table in enumerate(self.tables):
            for j, column in enumerate(table.columns):
                if column.name == version_column:
                    raise _error_at(
                        f"column {column.name!r} has the name of the version column; rename "
                        "defaults.version_column or the column",
                        "tables",
                        i,
                        "columns",
                        j,
                    )
                for udt in _udt_names(column.cql_type):
                    if udt not in self.user_types:
                        raise _error_at(
                            _unknown_type_message(udt),
                            "tables",
                            i,
                            "columns",
                            j,
                            "type",
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

    def dlq_topic_for(self, table: TableSpec) -> str:
        """The table's own dead-letter topic, so DLQ depth is observable per table."""
        return f"{self.connectors.dlq_topic}.{table.keyspace}.{table.table}"


def _unknown_type_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(SCALAR_TYPES), n=1, cutoff=0.75)
    if close:
        return f"{name!r} is not a CQL type; did you mean {close[0]!r}?"
    return f"uses user type {name!r}, which is not declared under user_types"


def _udt_names(cql_type: CqlType) -> list[str]:
    names = [cql_type.udt_name] if cql_type.udt_name else []
    for param in cql_type.params:
        names.extend(_udt_names(param))
    return names


# ---------------------------------------------------------------------------
# Loading: YAML nodes → environment interpolation → pydantic → located errors


def interpolate_env(text: str, environ: Mapping[str, str], source: str, line: int = 1) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; an unset name without default is an error.

    ``line`` is the file line ``text`` starts on, so the error points at the reference.
    """

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        where = line + text.count("\n", 0, match.start())
        raise ConfigError(
            f"{source}:{where}: environment variable {name} is not set; "
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
    """Validate declaration text; ``source`` names it in errors (a path or ``<string>``)."""
    document = load_yaml_document(raw_text, source, os.environ if environ is None else environ)
    if not isinstance(document, Mapping):
        got = "an empty file" if document is None else f"a {type(document).__name__}"
        raise ConfigError(
            f"{source}: the declaration must be a mapping with a 'tables' list, got {got}"
        )
    try:
        with _no_cyclic_gc():
            return PipelineConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, document, exc)) from None


def load_yaml_document(text: str, source: str, environ: Mapping[str, str]) -> Any:
    """Parse YAML, then interpolate ``${ENV}`` inside scalar values only.

    Interpolating after parsing means a value (say, a password with ``#`` or
    ``: ``) can never change the document's structure, and a reference in a
    comment is ignored. Mapping keys are always strings, so a column named
    ``on``, ``yes`` or ``null`` keeps its name. A key repeated in one mapping
    is an error instead of YAML's silent last-one-wins.

    The document is parsed by libyaml when PyYAML has it and composed here without
    recursion: nesting deeper than :data:`MAX_YAML_DEPTH` and aliases that would repeat
    more than :data:`YAML_ALIAS_NODE_ALLOWANCE` nodes (or the document's own count, if
    larger) are refused with the line, so neither a deep file nor a "billion laughs" can
    exhaust the stack, the memory or the time.
    """
    loader = _YAML_LOADER(text)
    try:
        with _no_cyclic_gc():
            node = _compose(loader, source)
            if node is None:
                return None
            _interpolate(node, loader, source, environ)
            return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = exc.problem or exc.context or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a document's objects are built: they all stay
    alive, and a million of them made each collection rescan the growing heap (a 19 MB
    declaration loaded in 16 s instead of 6)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# A composed node: the node, how many nodes it stands for with aliases expanded, and how
# many collection levels it holds (0 for a scalar).
_Composed = tuple[yaml.Node, int, int]


@dataclass
class _OpenCollection:
    node: yaml.SequenceNode | yaml.MappingNode
    anchor: str | None
    size: int = 1
    height: int = 1
    key: yaml.Node | None = None  # a mapping key waiting for its value


def _compose(loader: Any, source: str) -> yaml.Node | None:
    """The single document's node graph, built from parser events with an explicit stack."""
    get_event, resolve = loader.get_event, loader.resolve
    get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        return None
    get_event()  # document start
    anchors: dict[str, _Composed] = {}
    stack: list[_OpenCollection] = []
    distinct = borrowed = 0
    while True:
        event = get_event()
        kind = type(event)
        if kind is yaml.AliasEvent:
            done = _alias(event, anchors, stack, source)
            borrowed += done[1]
            allowance = max(YAML_ALIAS_NODE_ALLOWANCE, distinct)
            if borrowed > allowance:
                raise ConfigError(
                    f"{source}:{event.start_mark.line + 1}: alias *{event.anchor} makes the "
                    f"aliases repeat more than {allowance} nodes (each alias copies its anchor's "
                    "whole subtree, so nested aliases grow exponentially); write the repeated "
                    "parts out or use fewer aliases"
                )
        elif kind is yaml.ScalarEvent:
            distinct += 1
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            done = (node, 1, 0)
            if event.anchor is not None:
                anchors[_new_anchor(event, anchors, stack, source)] = done
        elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
            distinct += 1
            if len(stack) >= MAX_YAML_DEPTH:
                raise _too_deep(source, event.start_mark.line + 1)
            node_kind = yaml.SequenceNode if kind is yaml.SequenceStartEvent else yaml.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolve(node_kind, None, event.implicit)
            collection = node_kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
            anchor = None if event.anchor is None else _new_anchor(event, anchors, stack, source)
            stack.append(_OpenCollection(collection, anchor))
            continue
        elif kind is yaml.SequenceEndEvent or kind is yaml.MappingEndEvent:
            closed = stack.pop()
            closed.node.end_mark = event.end_mark
            done = (closed.node, closed.size, closed.height)
            if closed.anchor is not None:
                anchors[closed.anchor] = done
        else:  # the parser only hands over the events above inside a document
            raise ConfigError(
                f"{source}:{event.start_mark.line + 1}: not valid YAML: unexpected {event}"
            )
        if not stack:
            _single_document(loader, source)
            return done[0]
        parent = stack[-1]
        parent.size += done[1]
        if done[2] >= parent.height:
            parent.height = done[2] + 1
        if parent.node.id == "sequence":
            parent.node.value.append(done[0])
        elif parent.key is None:
            parent.key = done[0]
        else:
            parent.node.value.append((parent.key, done[0]))
            parent.key = None


def _new_anchor(
    event: Any, anchors: dict[str, _Composed], stack: list[_OpenCollection], source: str
) -> str:
    anchor = str(event.anchor)
    if anchor in anchors or any(o.anchor == anchor for o in stack):
        raise ConfigError(
            f"{source}:{event.start_mark.line + 1}: not valid YAML: anchor &{anchor} is defined "
            "twice; give each anchor its own name"
        )
    return anchor


def _alias(
    event: Any,
    anchors: dict[str, _Composed],
    stack: list[_OpenCollection],
    source: str,
) -> _Composed:
    anchor, line = str(event.anchor), event.start_mark.line + 1
    if anchor not in anchors:
        if any(o.anchor == anchor for o in stack):
            raise ConfigError(
                f"{source}:{line}: alias *{anchor} refers to a node that contains it; a "
                "declaration cannot be recursive"
            )
        raise ConfigError(
            f"{source}:{line}: not valid YAML: alias *{anchor} has no anchor before it"
        )
    done = anchors[anchor]
    if len(stack) + done[2] > MAX_YAML_DEPTH:
        raise _too_deep(source, line)
    return done


def _too_deep(source: str, line: int) -> ConfigError:
    return ConfigError(
        f"{source}:{line}: the document nests more than {MAX_YAML_DEPTH} levels deep here; a "
        "declaration needs about eight, so check the indentation and brackets"
    )


def _single_document(loader: Any, source: str) -> None:
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise ConfigError(
            f"{source}:{event.start_mark.line + 1}: not valid YAML: a second document starts "
            "here; a declaration is one document"
        )


def _interpolate(root: yaml.Node, loader: Any, source: str, environ: Mapping[str, str]) -> None:
    """Types every mapping key as a string, refuses repeated keys and literal secrets, and
    replaces ``${ENV}`` references in scalar values (each scalar once, aliases or not)."""
    originals: dict[int, str] = {}  # id of an interpolated scalar -> its text in the file
    pending: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while pending:
        node, path = pending.pop()
        if isinstance(node, yaml.ScalarNode):
            raw = originals.get(id(node), str(node.value))
            if "${" in raw:
                _check_secret_reference(path, raw, node, source)
                if id(node) not in originals:
                    originals[id(node)] = raw
                    new_value = interpolate_env(raw, environ, source, node.start_mark.line + 1)
                    if not node.style:  # None or "" (libyaml) for a plain scalar
                        # A plain ${SLICES} resolves like the value written in its place.
                        node.tag = loader.resolve(yaml.ScalarNode, new_value, (True, False))
                    node.value = new_value
            elif path in SECRET_FIELDS and raw not in ("", "~", "null"):
                _check_secret_reference(path, raw, node, source)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend((item, (*path, "[]")) for item in reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            pending.extend(reversed(_mapping_children(node, path, source)))


def _mapping_children(
    node: yaml.MappingNode, path: tuple[str, ...], source: str
) -> list[tuple[yaml.Node, tuple[str, ...]]]:
    children: list[tuple[yaml.Node, tuple[str, ...]]] = []
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == _YAML_MERGE_TAG:
            # Merged keys belong to this mapping: `<<: *base` or `<<: [*a, *b]`.
            merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            children.extend((m, path) for m in merged)
        elif isinstance(key_node, yaml.ScalarNode):
            key_node.tag = _YAML_STR_TAG
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(
                    f"{source}:{line}: key {key_node.value!r} appears twice in the same "
                    f"mapping (first on line {seen[key_node.value]}); YAML would silently keep "
                    "only the last one"
                )
            seen[key_node.value] = line
            children.append((value_node, (*path, key_node.value)))
        else:
            children.append((value_node, (*path, "?")))
    return children


def _check_secret_reference(
    path: tuple[str, ...], value: str, scalar: yaml.ScalarNode, source: str
) -> None:
    if path not in SECRET_FIELDS:
        return
    dotted = ".".join(path)
    variable = f"CDC_{'_'.join(p.upper() for p in path)}"
    if not _WHOLE_ENV_REF.match(value.strip()):
        raise ConfigError(
            f"{source}:{scalar.start_mark.line + 1}: {dotted} is a secret and must not be written "
            f"in the file; write it as ${{{variable}}} and export that variable"
        )
    reference = _ENV_REF.match(value.strip())
    if reference is not None and reference.group(2):
        raise ConfigError(
            f"{source}:{scalar.start_mark.line + 1}: {dotted} is a secret, and the default after "
            "':-' would write it in the file; drop the default (an empty one, ':-}', is "
            f"allowed) and export {reference.group(1)}"
        )


def _format_validation_error(source: str, document: Any, exc: ValidationError) -> str:
    lines = [f"{source}: invalid declaration ({exc.error_count()} problem(s)):"]
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        loc = tuple(error["loc"]) + tuple(ctx.get("subpath", ()))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = _unknown_field_message(str(loc[-1]))
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  {_field_path(document, loc)}: {message}")
    return "\n".join(lines)


def _unknown_field_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_all_field_names()), n=1, cutoff=0.7)
    hint = f"; did you mean {close[0]!r}?" if close else " (check its spelling and indentation)"
    return f"unknown field {name!r}{hint}"


def _all_field_names() -> set[str]:
    models: tuple[type[BaseModel], ...] = (
        PipelineConfig,
        Defaults,
        ScyllaConnection,
        ConnectorSettings,
        SecretsConfig,
        TableSpec,
        ColumnSpec,
        Tolerances,
        LagSlo,
        Expectation,
        CanarySpec,
    )
    return {name for model in models for name in model.model_fields}


def _field_path(document: Any, loc: tuple[int | str, ...]) -> str:
    # Turn pydantic's location into the path a user reads in the YAML file, e.g.
    # tables[0](shop.orders).columns.total.type — columns written as a mapping
    # are named by their key, not by their position.
    parts: list[str] = []
    node = document
    for item in loc:
        if isinstance(item, int) and isinstance(node, Mapping) and item < len(node):
            key = list(node)[item]
            parts.append(_key_label(str(key), first=not parts))
            node = node[key]
        elif isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, Mapping) and "source" in node:
                    label += f"({node['source']})"
            else:
                node = None
            parts.append(label)
        else:
            parts.append(_key_label(item, first=not parts))
            node = node.get(item) if isinstance(node, Mapping) else None
    return "".join(parts) or "(document)"


def _key_label(key: str, *, first: bool) -> str:
    # Names with dots, brackets or control characters are shown quoted so the path stays readable.
    if key.isprintable() and not any(c in key for c in ".[]") and key:
        return key if first else f".{key}"
    return f"[{key!r}]"
