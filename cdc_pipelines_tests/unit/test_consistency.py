"""Whether the reads repair made are as sure of a delete as the delete consistency's re-read."""

from __future__ import annotations

import pytest

from cdc_pipelines.scylla.consistency import datacenter_count, read_covers


@pytest.mark.parametrize(
    ("read", "confirm", "datacenters", "covers"),
    [
        ("QUORUM", "QUORUM", 3, True),
        ("ALL", "QUORUM", 2, True),
        ("LOCAL_QUORUM", "QUORUM", 1, True),  # one datacenter: the same replicas
        ("LOCAL_QUORUM", "QUORUM", 2, False),  # a quorum of one datacenter only
        ("LOCAL_QUORUM", "QUORUM", 0, False),  # unknown topology: not assumed
        ("QUORUM", "EACH_QUORUM", 1, True),
        ("QUORUM", "EACH_QUORUM", 2, False),
        ("ONE", "QUORUM", 1, False),
        ("LOCAL_ONE", "QUORUM", 1, False),
        ("QUORUM", "ALL", 1, False),
        ("QUORUM", "ONE", 1, True),
        ("LOCAL_ONE", "ONE", 1, True),
    ],
)
def test_a_read_covers_the_confirmation_only_when_it_asks_as_many_replicas(
    read: str, confirm: str, datacenters: int, covers: bool
) -> None:
    assert read_covers(read, confirm, datacenters) is covers


class _Host:
    def __init__(self, datacenter: str | None) -> None:
        self.datacenter = datacenter


class _Session:
    def __init__(self, *datacenters: str | None) -> None:
        hosts = [_Host(dc) for dc in datacenters]
        self.cluster = type("C", (), {"metadata": type("M", (), {"all_hosts": lambda s: hosts})()})


def test_datacenters_are_counted_from_the_cluster_metadata_and_unknown_is_zero() -> None:
    assert datacenter_count(_Session("dc1", "dc1", "dc2")) == 2
    assert datacenter_count(_Session("dc1")) == 1
    assert datacenter_count(_Session("dc1", None)) == 0
    assert datacenter_count(object()) == 0
