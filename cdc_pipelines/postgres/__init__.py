"""PostgreSQL side of the pipeline: column types, target DDL, readers and the repair writer.

Library code: no Dagster imports. Every identifier is composed with ``psycopg.sql``.
"""
