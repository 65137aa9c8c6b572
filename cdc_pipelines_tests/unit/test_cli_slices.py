"""``reconcile --slices`` is checked like the declaration's slice count, before any service
is contacted: exit 2 and a message naming the option, the value and the allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdc_pipelines.cli import main
from cdc_pipelines.config import MAX_SLICE_COUNT

DECLARATION = """\
tables:
  - source: shop.orders
    target: public.orders
    partition_key: [id]
    columns: {id: int, total: decimal}
"""


@pytest.mark.parametrize("bad", ["0", "-3", str(MAX_SLICE_COUNT + 1)])
def test_a_slice_count_out_of_range_exits_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(DECLARATION, encoding="utf-8")
    code = main(["reconcile", "shop.orders", "--config", str(path), "--slices", bad])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--slices {bad}" in err
    assert f"between 1 and {MAX_SLICE_COUNT}" in err


def test_a_slice_count_that_is_not_a_number_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(DECLARATION, encoding="utf-8")
    code = main(["reconcile", "shop.orders", "--config", str(path), "--slices", "many"])
    assert code == 2
    assert "--slices" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "bad"),
    [("--settle-seconds", "-1"), ("--verify-timeout", "-5"), ("--verify-timeout", "soon")],
)
def test_negative_or_unreadable_waits_exit_2_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, bad: str
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(DECLARATION, encoding="utf-8")
    code = main(["reconcile", "shop.orders", "--config", str(path), option, bad])
    assert code == 2 and option in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "hinted"), [((), True), (("--repair",), False)], ids=["dry-run", "repair"]
)
def test_the_dry_run_script_suggests_repair_only_when_repair_was_not_asked(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    hinted: bool,
) -> None:
    from cdc_pipelines.commands import reconcile_cmd
    from cdc_pipelines.reconcile.report import ReconcileReport

    script = tmp_path / "repair-x.sql"
    refused = "the sink's catch-up could not be confirmed"

    def reconciled(table, settings, options, progress=None):  # type: ignore[no-untyped-def]
        return ReconcileReport(
            table.source,
            missing=1,
            remaining=1,
            dry_run_sql_path=str(script),
            repair_refused=refused if options.repair else None,
        )

    monkeypatch.setattr(reconcile_cmd, "run_reconciliation", reconciled)
    path = tmp_path / "pipeline.yaml"
    path.write_text(DECLARATION, encoding="utf-8")
    code = main(["reconcile", "shop.orders", "--config", str(path), *flags])
    err = capsys.readouterr().err
    assert code == 1
    assert f"dry-run SQL: {script}" in err
    assert ("apply with --repair" in err) is hinted
