"""One replicated table with every effective setting resolved: what a table's run needs.

The declaration leaves some settings to ``defaults`` and derives others (topic, sink
name, dead-letter topic) from the connector settings. :func:`resolve` works them out
once into an immutable :class:`ReplicatedTable`, which is what the CLI, the engine and
the Dagster layer pass around instead of ``(config, table)`` pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cdc_pipelines.config import (
    MAX_SLICE_COUNT,
    LagSlo,
    PipelineConfig,
    ScyllaConnection,
    SecretsConfig,
    TableSpec,
    Tolerances,
)
from cdc_pipelines.errors import ConfigError
from cdc_pipelines.rows.canonical import CanonicalSchema


@dataclass(frozen=True)
class ReplicatedTable:
    """A declared table and its effective settings (defaults applied, names derived)."""

    spec: TableSpec
    slices: int
    tolerances: Tolerances
    lag_slo: LagSlo
    version_column: str
    user_types: Mapping[str, Mapping[str, str]]
    topic: str
    sink_name: str
    dlq_topic: str
    scylla: ScyllaConnection
    secrets: SecretsConfig  # where Connect reads credentials and the mask salt
    canonical: CanonicalSchema
    # The salt of hashed columns, loaded from the secrets when a run needs it
    # (connect.secrets.with_mask_salt); never printed.
    mask_salt: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def source(self) -> str:
        """``keyspace.table`` in ScyllaDB: the table's name everywhere."""
        return self.spec.source

    @property
    def target(self) -> str:
        """``schema.table`` in PostgreSQL."""
        return self.spec.target

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self.spec.primary_key

    def with_slices(self, count: object, what: str = "--slices") -> ReplicatedTable:
        """The same table read in ``count`` token slices (validated like the declaration)."""
        if isinstance(count, bool) or not isinstance(count, int):
            raise ConfigError(f"{what} {count!r}: the slice count must be a whole number")
        if not 1 <= count <= MAX_SLICE_COUNT:
            raise ConfigError(
                f"{what} {count}: the slice count must be between 1 and {MAX_SLICE_COUNT}"
            )
        return replace(self, slices=count)


def resolve(config: PipelineConfig, source: str) -> ReplicatedTable:
    """The declared table ``keyspace.table`` with its effective settings.

    Raises :class:`ConfigError` listing the declared tables when ``source`` is not one.
    """
    return resolve_spec(config, config.table(source))


def resolve_spec(config: PipelineConfig, spec: TableSpec) -> ReplicatedTable:
    """Like :func:`resolve`, for a table spec already taken from ``config``."""
    tolerances = spec.tolerances or config.defaults.tolerances
    version_column = config.defaults.version_column
    return ReplicatedTable(
        spec=spec,
        slices=spec.slices or config.defaults.slices,
        tolerances=tolerances,
        lag_slo=spec.lag_slo or config.defaults.lag_slo,
        version_column=version_column,
        user_types=config.user_types,
        topic=config.topic_for(spec),
        sink_name=config.sink_name_for(spec),
        dlq_topic=config.dlq_topic_for(spec),
        scylla=config.scylla,
        secrets=config.connectors.secrets,
        canonical=CanonicalSchema.from_table(
            spec,
            version_column=version_column,
            tolerances=tolerances,
            user_types=config.user_types,
        ),
    )


def resolve_all(config: PipelineConfig) -> tuple[ReplicatedTable, ...]:
    """Every declared table, resolved, in declaration order."""
    return tuple(resolve_spec(config, spec) for spec in config.tables)
