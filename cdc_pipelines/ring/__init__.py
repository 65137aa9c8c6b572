"""The Murmur3 token ring: partition-key tokens and the token slices a table is read by.

Pure functions on Arrow and Python values; nothing here talks to a cluster.
"""
