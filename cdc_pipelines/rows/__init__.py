"""Rows of a replicated table: canonical Arrow form, row hash, comparison, column layout.

The bottom layer of the library: every reader and writer imports it, and it imports
none of them (only the declaration, the CQL types and the errors).
"""
