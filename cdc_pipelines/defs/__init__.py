"""The Dagster layer: assets, checks, sensors, jobs and resources built from the declaration.

Thin by design: every module here wires library functions (which never import Dagster)
into Dagster definitions; ``build.build_definitions`` assembles them.
"""
