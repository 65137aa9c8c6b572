"""ScyllaDB side of the pipeline: the Murmur3 token ring, its slices, and partition-key tokens.

Nothing here talks to a cluster; readers built on top use these to page by token range.
"""
