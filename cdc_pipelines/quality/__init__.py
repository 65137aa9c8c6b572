"""Data quality: the declaration's expectations as Great Expectations suites, row-count parity.

Target-side suites run server-side on PostgreSQL (a SQL datasource, so only aggregates
leave the database); source-side suites run on an explicit, LIMITed sample of ScyllaDB.
"""
