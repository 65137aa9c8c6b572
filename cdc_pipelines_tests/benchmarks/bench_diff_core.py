"""Benchmark of the reconciliation core against baselines measured in the same run.

``python -m cdc_pipelines_tests.benchmarks.bench_diff_core --rows 1000000`` builds a slice
of N source rows and a shuffled target with 2% drift (missing, extra and mismatched rows in
equal parts), for a composite ``(bigint, text)`` key and a single ``uuid`` key, and times
normalize + hash + join + verdict (``diff_slice``) beside a bare DuckDB full outer join of
the same keys; then the row-hash options, target-text canonicalization and partition
tokens, vectorized against the per-row C path. Rates count rows of both sides.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from cdc_pipelines.config import TableSpec, Tolerances
from cdc_pipelines.reconcile.diff import diff_slice
from cdc_pipelines.ring.tokens import partition_tokens, reference_partition_tokens
from cdc_pipelines.rows.canonical import CanonicalSchema, from_postgres_text, normalize
from cdc_pipelines.rows.rowhash import row_hashes

DRIFT = 0.02
REPEATS = 3
PER_ROW_SAMPLE = 200_000
SEED = 20_260_101
TOLERANCES = Tolerances(float_abs=1e-9)
VALUE_COLUMNS = {
    "price": "double",
    "note": "text",
    "placed": "timestamp",
    "quantity": "int",
}
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]] = {
    "(bigint, text) key": (("customer",), ("item",), {"customer": "bigint", "item": "text"}),
    "uuid key": (("id",), (), {"id": "uuid"}),
}


def schema_for(layout: str) -> CanonicalSchema:
    partition, clustering, key_types = LAYOUTS[layout]
    spec = TableSpec.model_validate(
        {
            "source": "bench.orders",
            "target": "public.orders",
            "partition_key": list(partition),
            "clustering_key": list(clustering),
            "columns": {**key_types, **VALUE_COLUMNS},
        }
    )
    return CanonicalSchema.from_table(spec, version_column="_cdc_version_us")


@dataclass(frozen=True)
class Timing:
    name: str
    seconds: float
    rows: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def best_of(name: str, rows: int, action: Callable[[], object], repeats: int = REPEATS) -> Timing:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return Timing(name, best, rows)


def report(timing: Timing, baseline: Timing | None = None) -> None:
    line = f"  {timing.name:<44} {timing.seconds * 1000:8.1f} ms {timing.rate / 1e6:7.2f} M rows/s"
    if baseline is not None:
        per_row = (timing.seconds / timing.rows) / (baseline.seconds / baseline.rows)
        line += f"  = {per_row:4.2f}x the time per row of '{baseline.name.strip()}'"
    print(line, flush=True)


def make_rows(rng: np.random.Generator, keys: npt.NDArray[np.int64]) -> pa.Table:
    """Rows for every layout's columns; the key columns derive from ``keys`` only."""
    count = len(keys)
    placed = rng.integers(1_600_000_000_000, 1_700_000_000_000, count) * 1000
    uuid_bytes = np.zeros((count, 16), dtype=np.uint8)
    uuid_bytes[:, :8] = keys.astype(">u8").view(np.uint8).reshape(count, 8)
    uuid_bytes[:, 8:] = 0x5A
    return pa.table(
        {
            "customer": pa.array(keys // 4, pa.int64()),
            "item": pc.cast(pa.array(keys % 4 * 1_000_003 + keys // 4 % 97), pa.string()),
            "id": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), count, [None, pa.py_buffer(uuid_bytes.tobytes())]
            ),
            "price": pa.array(rng.random(count) * 100),
            "note": pc.binary_join_element_wise(
                "note-", pc.cast(pa.array(keys % 1000), pa.string()), ""
            ),
            "placed": pa.array(placed, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "quantity": pa.array(rng.integers(0, 1000, count).astype(np.int32)),
            "_cdc_version_us": pa.array(placed, pa.int64()),
        }
    )


def drifted_pair(rows: int) -> tuple[pa.Table, pa.Table]:
    """Source rows, and a shuffled target missing, adding and changing DRIFT/3 of them each."""
    rng = np.random.default_rng(SEED)
    source = make_rows(rng, rng.permutation(rows).astype(np.int64))
    part = int(rows * DRIFT / 3)
    kept = source.slice(part)
    note = kept.column("note")
    changed = pc.binary_join_element_wise(note.slice(0, part), "!", "")
    note = pa.chunked_array(changed.chunks + note.slice(part).chunks)
    kept = kept.set_column(kept.column_names.index("note"), "note", note)
    extra = make_rows(rng, np.arange(rows, rows + part, dtype=np.int64))
    target = pa.concat_tables([kept, extra])
    return source.combine_chunks(), target.take(rng.permutation(target.num_rows)).combine_chunks()


def core(source: pa.Table, target: pa.Table, schema: CanonicalSchema) -> None:
    result = diff_slice(normalize(source, schema), normalize(target, schema), schema, TOLERANCES)
    assert result.discrepancy_count > 0


def bare_join(source: pa.Table, target: pa.Table, keys: list[str]) -> None:
    con = duckdb.connect()
    renamed = [f"k{i}" for i in range(len(keys))]
    con.register("s", source.select(keys).rename_columns(renamed))
    con.register("t", target.select(keys).rename_columns(renamed))
    on = " AND ".join(f"s.{k} = t.{k}" for k in renamed)
    con.sql(f"SELECT count(*) FROM s FULL OUTER JOIN t ON {on}").fetchall()
    con.close()


def hash_struct(table: pa.Table) -> None:
    con = duckdb.connect()
    con.register("r", table.select(list(VALUE_COLUMNS)))
    con.sql("SELECT hash(struct_pack(price, note, placed, quantity)) FROM r").to_arrow_table()
    con.close()


def hash_numpy_python(table: pa.Table) -> None:
    """The numpy alternative: fixed-width columns mix in numpy, text needs Python's hash()."""
    mixed = np.zeros(table.num_rows, dtype=np.uint64)
    for name in ("price", "placed", "quantity"):
        values = table.column(name).combine_chunks()
        if name != "price":
            values = values.cast(pa.int64())
        bits = values.to_numpy().view(np.uint64)
        mixed = (mixed ^ bits) * np.uint64(0x9E3779B97F4A7C15)
    text = table.column("note").to_pylist()
    mixed ^= np.fromiter((hash(s) for s in text), np.int64, table.num_rows).view(np.uint64)


def as_postgres_text(table: pa.Table, schema: CanonicalSchema) -> pa.Table:
    """The target as the COPY CSV reader hands it over: every column as PostgreSQL text."""
    columns = {}
    for name in schema.column_names:
        values = table.column(name)
        if name == "placed":
            values = pc.strftime(values, format="%Y-%m-%d %H:%M:%S+00")
        columns[name] = values.cast(pa.string())
    return pa.table(columns)


def bench_layout(layout: str, source: pa.Table, target: pa.Table) -> None:
    schema = schema_for(layout)
    keys = [c.name for c in schema.key_columns]
    both = source.num_rows + target.num_rows
    result = diff_slice(normalize(source, schema), normalize(target, schema), schema, TOLERANCES)
    print(
        f"{layout}: missing {result.missing_count:,}, extra {result.extra_count:,}, "
        f"mismatched {result.mismatched_count:,} of {result.matched_rows:,} pairs",
        flush=True,
    )
    baseline = best_of(
        "bare DuckDB full outer join of the keys", both, lambda: bare_join(source, target, keys)
    )
    report(baseline)
    report(
        best_of(
            "diff core (normalize+hash+join+verdict)", both, lambda: core(source, target, schema)
        ),
        baseline,
    )
    report(
        best_of(
            "  of which normalize, both sides",
            both,
            lambda: (normalize(source, schema), normalize(target, schema)),
        )
    )


def bench_hashes(source: pa.Table, schema: CanonicalSchema) -> None:
    rows = source.num_rows
    print("row hash options (source side):", flush=True)
    variadic = best_of("DuckDB hash(c1, c2, …) [chosen]", rows, lambda: row_hashes(source, schema))
    report(variadic)
    report(best_of("DuckDB hash(struct_pack(…))", rows, lambda: hash_struct(source)), variadic)
    sample = source.slice(0, min(rows, PER_ROW_SAMPLE))
    numpy_python = best_of(
        "numpy mix + Python hash() for text", sample.num_rows, lambda: hash_numpy_python(sample), 1
    )
    report(numpy_python, variadic)


def bench_tokens(source: pa.Table) -> None:
    print("partition tokens (vectorized numpy vs per-row serialization + C murmur3):", flush=True)
    sample = source.slice(0, min(source.num_rows, PER_ROW_SAMPLE))
    for layout in LAYOUTS:
        schema = schema_for(layout)
        key_columns = [(c.name, c.cql_type) for c in schema.key_columns]
        vectorized = best_of(
            f"vectorized, {layout}",
            source.num_rows,
            lambda k=key_columns: partition_tokens(source, k),
        )
        report(vectorized)
        per_row = best_of(
            f"per-row, {layout}",
            sample.num_rows,
            lambda k=key_columns: reference_partition_tokens(sample, k),
            1,
        )
        report(per_row)
        print(
            f"  -> vectorized: {vectorized.rate / per_row.rate:.1f}x the per-row rate", flush=True
        )


def run(rows: int) -> None:
    print(
        f"\n== {rows:,} source rows, {DRIFT:.0%} drift, DuckDB {duckdb.__version__} ==", flush=True
    )
    source, target = drifted_pair(rows)
    for layout in LAYOUTS:
        bench_layout(layout, source, target)
    composite = schema_for(next(iter(LAYOUTS)))
    bench_hashes(source, composite)
    print("target text -> canonical (from_postgres_text, composite-key table):", flush=True)
    text = as_postgres_text(target, composite)
    report(
        best_of("from_postgres_text", target.num_rows, lambda: from_postgres_text(text, composite))
    )
    bench_tokens(source)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[1_000_000], help="source rows, one run each"
    )
    for rows in parser.parse_args().rows:
        run(rows)


if __name__ == "__main__":
    main()
