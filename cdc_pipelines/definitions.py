"""The Dagster code location's entry point: ``cdc_pipelines.definitions:defs``.

Built from the pipeline declaration (``$CDC_PIPELINE_CONFIG`` or ``./pipeline.yaml``);
an invalid declaration fails the load with the declaration's own error message.
"""

from __future__ import annotations

from cdc_pipelines.defs.build import load_definitions

defs = load_definitions()
