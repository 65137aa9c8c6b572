"""The README's first command works: the demo runs the pipeline end to end and repairs the drift."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_streams_drifts_reconciles_and_repairs(settings):
    result = subprocess.run(
        [sys.executable, "-m", "cdc_pipelines.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert "demo.orders: 20000 rows written and applied" in log
    assert "missing 5, extra 3, mismatched 4" in log
    assert "repair applied: 9 upserted, 3 deleted" in log
    assert "second reconciliation: 0 discrepancies" in log
