"""ScyllaDB side of the pipeline: CQL sessions, the source reader and key re-reads.

Library code: no Dagster imports. Every CQL identifier is quoted with ``quote_cql``.
"""
