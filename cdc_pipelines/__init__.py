"""cdc_pipelines: declare, deploy, watch, diff and repair a ScyllaDB → PostgreSQL CDC pipeline."""

__version__ = "0.1.0"
