"""Reconciliation core: canonical Arrow form, row hashes, and the exact per-slice diff.

Every step works on plain Arrow tables, so it is testable without a database.
"""
