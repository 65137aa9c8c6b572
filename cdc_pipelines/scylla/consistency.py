"""Whether a read at one consistency level is as sure of a row's absence as another.

Repair may skip re-reading the keys it wrote at ``scylla.delete_consistency`` only when the
reads it already made (at ``scylla.consistency``) were at least that strong: a read that
asked fewer replicas could have missed a delete the stronger read would have seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# In one datacenter a local level is its global one, and EACH_QUORUM is QUORUM.
_ONE_DATACENTER = {"LOCAL_ONE": "ONE", "LOCAL_QUORUM": "QUORUM", "EACH_QUORUM": "QUORUM"}
_STRENGTH = {"ONE": 1, "QUORUM": 2, "ALL": 3}


def read_covers(read_level: str, confirm_level: str, datacenters: int) -> bool:
    """Whether a read at ``read_level`` is as sure as one at ``confirm_level`` in a cluster
    of ``datacenters`` datacenters (0 when unknown: then only the same level or ALL is)."""
    if read_level in (confirm_level, "ALL"):
        return True
    if datacenters != 1:
        return False
    read = _STRENGTH.get(_ONE_DATACENTER.get(read_level, read_level), 0)
    confirm = _STRENGTH.get(_ONE_DATACENTER.get(confirm_level, confirm_level), 4)
    return read >= confirm


def datacenter_count(session: Any) -> int:
    """How many datacenters the session's cluster has (0 when its metadata cannot tell)."""
    try:
        hosts: Iterable[Any] = session.cluster.metadata.all_hosts()
        names = {host.datacenter for host in hosts}
    except Exception:  # metadata not loaded: not knowing is answered as "unknown"
        return 0
    return 0 if None in names else len(names)
