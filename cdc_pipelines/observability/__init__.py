"""Metrics and structured logs the pipeline emits."""
