"""Kafka Connect: connector configurations built from the declaration, and the REST client.

Library code: no Dagster imports.
"""
