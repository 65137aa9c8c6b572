"""Reconciliation of one table: the steps index → diff → verify → repair, and their scratch files.

The only package that drives both readers and the writer; the CLI and Dagster compose its steps.
"""
