"""``cdc-pipelines reconcile KEYSPACE.TABLE``: diff, verify and (optionally) repair one table.

Exit codes: 0 no confirmed discrepancy remains, 1 confirmed discrepancies remain
(e.g. after a dry run), 2 usage or configuration error, 3 a service failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdc_pipelines.commands.common import (
    EXIT_DISCREPANCIES,
    EXIT_OK,
    add_config_option,
    declaration,
    say,
    settings,
)
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.reconcile.progress import SliceProgress
from cdc_pipelines.reconcile.scratch import DEFAULT_SCRATCH_DIR
from cdc_pipelines.reconcile.table_run import DEFAULT_WORKERS, ReconcileOptions, run_reconciliation
from cdc_pipelines.reconcile.verify_step import DEFAULT_SETTLE_SECONDS
from cdc_pipelines.replicated_table import resolve


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "reconcile", help="diff one table by token slice, verify, and repair on request"
    )
    parser.add_argument("table", metavar="KEYSPACE.TABLE", help="the declared source table")
    add_config_option(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="report and write the repair SQL script, change nothing (the default)",
    )
    mode.add_argument("--repair", action="store_true", help="apply the verified repair")
    parser.add_argument("--slices", type=int, help="override the declared slice count")
    parser.add_argument("--report", metavar="PATH", help="write the JSON report here")
    parser.add_argument(
        "--scratch", metavar="DIR", default=str(DEFAULT_SCRATCH_DIR), help="scratch directory"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="slices read in parallel processes, and connections applying repair batches "
        f"(default {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--audit",
        choices=[d.value for d in AuditDetail],
        default=AuditDetail.KEYS.value,
        help="repair audit: 'keys' records every key's action (default); 'exceptions' records "
        "deletes and skipped keys per key and upserts as counts per batch (about 1.5x faster)",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=DEFAULT_SETTLE_SECONDS,
        help="wait this long before re-reading when Kafka cannot tell whether the sink caught up",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    table = resolve(declaration(args), args.table)
    if args.slices is not None:
        table = table.with_slices(args.slices)
    options = ReconcileOptions(
        scratch=Path(args.scratch),
        repair=bool(args.repair),
        workers=max(1, args.workers),
        settle_seconds=args.settle_seconds,
        audit_detail=AuditDetail(args.audit),
    )
    progress = SliceProgress(table.slices, stream=sys.stderr)
    report = run_reconciliation(table, settings(), options, progress=progress)
    progress.close()
    document = report.to_json()
    if args.report:
        Path(args.report).write_text(document + "\n")
        say(f"report written to {args.report}")
    print(document)
    say(
        f"{table.source}: {report.source_rows} source rows, {report.target_rows} target rows; "
        f"missing {report.missing}, extra {report.extra}, mismatched {report.mismatched}, "
        f"in flight {report.in_flight}; repaired {report.repaired['upserted']} upserted, "
        f"{report.repaired['deleted']} deleted in {report.duration_s:.1f}s"
    )
    if report.dry_run_sql_path:
        say(f"dry-run SQL: {report.dry_run_sql_path} (apply with --repair)")
    return EXIT_OK if report.remaining == 0 else EXIT_DISCREPANCIES
