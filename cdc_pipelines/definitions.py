"""The Dagster code location's entry point: ``cdc_pipelines.definitions:defs``."""

from __future__ import annotations

import dagster as dg

defs = dg.Definitions()
