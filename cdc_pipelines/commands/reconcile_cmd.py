"""``cdc-pipelines reconcile KEYSPACE.TABLE``: diff, verify and (optionally) repair one table.

Exit codes: 0 clean (nothing remains, and the sink's catch-up was confirmed for every
candidate), 1 discrepancies remain (after a dry run, target rows ahead of the source, or
verdicts left unsure by an unconfirmed catch-up), 2 usage or configuration error, 3 a service
failed or a value could not be read or written (the message names the column and value; a
repair that stopped writes a partial report and names the command that repairs the rest).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdc_pipelines.commands.common import (
    EXIT_DISCREPANCIES,
    EXIT_OK,
    EXIT_SERVICE,
    add_config_option,
    declaration,
    say,
    settings,
)
from cdc_pipelines.postgres.audit import AuditDetail
from cdc_pipelines.reconcile.progress import SliceProgress
from cdc_pipelines.reconcile.scratch import DEFAULT_SCRATCH_DIR
from cdc_pipelines.reconcile.table_run import DEFAULT_WORKERS, ReconcileOptions, run_reconciliation
from cdc_pipelines.reconcile.verify_step import DEFAULT_SETTLE_SECONDS, DEFAULT_VERIFY_TIMEOUT_S
from cdc_pipelines.replicated_table import resolve


def non_negative(text: str) -> float:
    """A number of seconds, 0 or more (argparse exits 2 with the message otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} seconds: give 0 or more")
    return value


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
    mode.add_argument(
        "--repair-unconfirmed",
        action="store_true",
        help="repair even when the sink's catch-up cannot be confirmed (Kafka down, timeout): "
        "rows still in flight may then be rewritten from the source",
    )
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
        type=non_negative,
        default=DEFAULT_SETTLE_SECONDS,
        help="wait this long before re-reading when Kafka cannot tell whether the sink caught up",
    )
    parser.add_argument(
        "--verify-timeout",
        type=non_negative,
        default=DEFAULT_VERIFY_TIMEOUT_S,
        help="wait at most this long for the sink to pass the scan's offsets "
        f"(default {DEFAULT_VERIFY_TIMEOUT_S:g} s); past it the verdicts are unconfirmed",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    table = resolve(declaration(args), args.table)
    if args.slices is not None:
        table = table.with_slices(args.slices)
    options = ReconcileOptions(
        scratch=Path(args.scratch),
        repair=bool(args.repair or args.repair_unconfirmed),
        repair_unconfirmed=bool(args.repair_unconfirmed),
        workers=max(1, args.workers),
        settle_seconds=args.settle_seconds,
        verify_timeout_s=args.verify_timeout,
        audit_detail=AuditDetail(args.audit),
    )
    progress = SliceProgress(table.slices, stream=sys.stderr)
    report = run_reconciliation(table, settings(), options, progress=progress)
    progress.close()
    document = report.to_json()
    print(document)
    if args.report:
        try:
            Path(args.report).write_text(document + "\n")
        except OSError as exc:
            say(f"error: cannot write the report to {args.report}: {exc.strerror or exc}")
            return EXIT_SERVICE
        say(f"report written to {args.report}")
    say(
        f"{table.source}: {report.source_rows} source rows, {report.target_rows} target rows; "
        f"missing {report.missing}, extra {report.extra}, mismatched {report.mismatched}, "
        f"target ahead {report.target_ahead}, in flight {report.in_flight}; repaired "
        f"{report.repaired['upserted']} upserted, {report.repaired['deleted']} deleted in "
        f"{report.duration_s:.1f}s"
    )
    if report.target_ahead:
        say(
            f"{report.target_ahead} target row(s) differ with a version ahead of the source's: "
            "repair will not overwrite them; see the 'target_ahead' rows of "
            f"{report.discrepancies_path}"
        )
    if report.repair_refused:
        say(f"not repaired: {report.repair_refused}")
    elif not report.catch_up_confirmed:
        say(f"warning: verdicts unconfirmed: {report.verification}")
    if report.dry_run_sql_path:
        # With --repair the script is only there because the repair was refused (said above).
        hint = "" if options.repair else " (apply with --repair)"
        say(f"dry-run SQL: {report.dry_run_sql_path}{hint}")
    return EXIT_OK if report.settled else EXIT_DISCREPANCIES
