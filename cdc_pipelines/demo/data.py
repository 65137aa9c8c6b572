"""Deterministic rows for the demo declaration's tables (``demo.orders``, ``demo.all_types``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
import uuid
from decimal import Decimal

from cassandra.util import Duration

from cdc_pipelines.config import TableSpec

REGIONS = ("eu-west", "us-east", "ap-south")
STATUSES = ("new", "paid", "shipped", "cancelled")
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def order_row(rng: random.Random, i: int) -> dict[str, object]:
    placed = EPOCH + dt.timedelta(seconds=i * 37, milliseconds=rng.randrange(1000))
    return {
        "region": REGIONS[i % len(REGIONS)],
        "CustomerId": 1000 + i // 4,
        "placed_at": placed,
        "order": uuid.UUID(int=rng.getrandbits(128), version=4),
        "user": f"user-{i // 4}",
        "status": STATUSES[rng.randrange(len(STATUSES))],
        "total": Decimal(rng.randrange(100, 1_000_000)) / 100,
        "quantity": rng.randrange(1, 20),
        "email": f"customer{i // 4}@example.com",
        "shipped_on": (placed + dt.timedelta(days=2)).date() if i % 3 else None,
        "tags": {"gift", "priority"} if i % 5 == 0 else ({"bulk"} if i % 7 == 0 else None),
        "internal_notes": "never leaves ScyllaDB",
    }


def all_types_row(rng: random.Random, i: int) -> dict[str, object]:
    return {
        "id": i,
        "c_bigint": rng.randrange(-(2**63), 2**63),
        "c_smallint": rng.randrange(-(2**15), 2**15),
        "c_tinyint": rng.randrange(-128, 128),
        "c_varint": rng.randrange(-(10**30), 10**30),
        "c_decimal": Decimal(rng.randrange(-(10**12), 10**12)).scaleb(-rng.randrange(0, 8)),
        "c_float": float(rng.randrange(-1000, 1000)) / 8,
        "c_double": rng.uniform(-1e9, 1e9),
        "c_boolean": bool(i % 2),
        "c_text": f"tëxt «{i}»" if i % 4 else "",
        "c_ascii": f"ascii-{i}",
        "c_varchar": f"varchar {i}",
        "c_blob": rng.randbytes(rng.randrange(0, 24)),
        "c_uuid": uuid.UUID(int=rng.getrandbits(128), version=4),
        "c_timeuuid": uuid.uuid1(node=0x0242AC120002, clock_seq=i % 16384),
        "c_timestamp": EPOCH + dt.timedelta(milliseconds=rng.randrange(10**10)),
        "c_date": dt.date(2000, 1, 1) + dt.timedelta(days=rng.randrange(20_000)),
        "c_time": rng.randrange(86_400 * 10**9),
        "c_duration": Duration(rng.randrange(0, 24), rng.randrange(0, 31), rng.randrange(10**12)),
        "c_inet": ipaddress.ip_address(rng.getrandbits(32)),
        "c_list": [rng.randrange(100) for _ in range(rng.randrange(1, 5))],
        "c_set": {f"s{rng.randrange(10)}" for _ in range(rng.randrange(1, 4))},
        "c_list_uuid": [uuid.UUID(int=rng.getrandbits(128), version=4)],
        "c_frozen_list": [rng.randrange(-(2**40), 2**40) for _ in range(rng.randrange(0, 3))],
        "c_map": {f"k{j}": rng.randrange(1000) for j in range(rng.randrange(1, 4))},
        "c_tuple": (i, f"t{i}", float(i) / 4),
        "c_udt": {
            "street": f"{i} Main St",
            "city": "Springfield",
            "zip": 10000 + i,
            "tags": {"home"},
        },
    }


def demo_rows(table: TableSpec, count: int, seed: int = 7) -> list[dict[str, object]]:
    """``count`` rows for one of the demo tables, the same for the same seed."""
    rng = random.Random(seed)
    if table.canary is not None:  # the canary's shape: a text key and a bigint
        key, column = table.partition_key[0], table.canary.column
        return [{key: f"row-{i}", column: rng.randrange(2**62)} for i in range(count)]
    make = order_row if table.table == "orders" else all_types_row
    return [make(rng, i) for i in range(count)]
