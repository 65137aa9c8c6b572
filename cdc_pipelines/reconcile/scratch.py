"""Where a table's reconciliation keeps its files, named in one place.

Under ``<scratch>/<keyspace>.<table>/``: ``target_index/`` (one Arrow file per slice),
``scan.json`` (the scan marker), ``slices/`` (each slice's candidates, result and repair
script) and the whole-table run's Parquet file of confirmed discrepancies and SQL script.
The CLI and Dagster runs share the layout, so either can pick up the other's files.

The files hold raw source values (the target copy, verified rows, repair SQL), so every step
that writes them runs under :func:`owner_only`: files are created 0o600, directories 0o700,
and the table's directory is made 0o700 even when an earlier version created it open.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.ipc as ipc

DEFAULT_SCRATCH_DIR = Path.home() / ".cache" / "cdc-pipelines" / "scratch"
SCAN_MARKER = "scan.json"
OWNER_ONLY_UMASK = 0o077  # files 0o600, directories 0o700
PRIVATE_DIR_MODE = 0o700

_P = ParamSpec("_P")
_R = TypeVar("_R")


@contextmanager
def owner_only_files() -> Iterator[None]:
    """Create files and directories readable by their owner only while inside."""
    previous = os.umask(OWNER_ONLY_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def owner_only(step: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``step`` (a step writing scratch files, in any process) under :func:`owner_only_files`."""

    @functools.wraps(step)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with owner_only_files():
            return step(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class ScratchLayout:
    """The files of one table's reconciliation under a scratch root."""

    root: Path
    source: str  # keyspace.table

    @property
    def table_dir(self) -> Path:
        return self.root / self.source

    def prepare(self) -> Path:
        """The table's directory, created (with the root) owner-only, or made so."""
        with owner_only_files():
            self.table_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.table_dir, PRIVATE_DIR_MODE)
        return self.table_dir

    @property
    def index_dir(self) -> Path:
        return self.table_dir / "target_index"

    @property
    def scan_marker(self) -> Path:
        return self.table_dir / SCAN_MARKER

    @property
    def slices_dir(self) -> Path:
        return self.table_dir / "slices"

    def candidates(self, slice_id: str) -> Path:
        """The slice's discrepancy candidates (Arrow IPC: keys, kind, differing columns)."""
        return self.slices_dir / f"slice={slice_id}.candidates.arrow"

    def slice_result(self, slice_id: str) -> Path:
        """The slice's diff counts (JSON)."""
        return self.slices_dir / f"slice={slice_id}.result.json"

    def slice_repair_script(self, slice_id: str, run_id: str) -> Path:
        return self.slices_dir / f"slice={slice_id}.repair-{run_id}.sql"

    def discrepancies(self, run_id: str) -> Path:
        """A whole-table run's confirmed discrepancies: a Parquet dataset, one file a slice."""
        return self.table_dir / f"discrepancies-{run_id}"

    def discrepancy_part(self, run_id: str, slice_id: str) -> Path:
        return self.discrepancies(run_id) / f"slice={slice_id}.parquet"

    def script_part(self, run_id: str, slice_id: str) -> Path:
        """One slice's part of a whole-table run's dry-run script."""
        return self.planned_chunks(run_id) / f"slice={slice_id}.sql"

    def planned_chunks(self, run_id: str) -> Path:
        """Where a repair keeps its checked plans until every chunk is planned."""
        return self.table_dir / f"plans-{run_id}"

    def partial_report(self, run_id: str) -> Path:
        """The report of a whole-table repair that stopped part-way."""
        return self.table_dir / f"report-{run_id}.partial.json"

    def repair_script(self, run_id: str) -> Path:
        """A whole-table run's dry-run SQL script."""
        return self.table_dir / f"repair-{run_id}.sql"


def write_candidates(path: Path, candidates: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ipc.new_file(str(path), candidates.schema) as writer:
        writer.write_table(candidates)


def read_candidates(path: Path) -> pa.Table:
    with pa.OSFile(str(path), "rb") as source:
        return ipc.open_file(source).read_all()
