"""The benchmark runs: one short check (two cheap rows on the tiny model, about 30 s). The benchmark
itself (`make bench`, about two hours) is not part of the suite: its figures are measurements, and
the behaviour behind them is proved where it lives (prefix-cached scores equal lm-eval's in
test_baselines.py, last-position log-probabilities equal whole-sequence ones in test_rlhf.py,
generation's replies equal lm-eval's in test_generation.py, the figures' formulas and the partial
runs' bookkeeping in test_bench_figures.py)."""

import json
import os

import pytest

from tests import forked
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_the_benchmark_runs_and_writes_its_rows_with_their_settings(tmp_path):
    p = forked.run(["bench/run.py", "--quick", "--only", "padding", "judged_kl", "--out", str(tmp_path)], ROOT,
                   dict(os.environ), timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["benchmarks"]
    assert set(rows) == {"padding", "judged_kl"} and all(row["bench_seconds"] > 0 for row in rows.values())
    assert all(row["profile"] == "quick" for row in rows.values())  # (a row carried into another run keeps its own)
    assert results["mode"] == "quick (tiny model)" and results["params"]["model"] == "tiny" and results["machine"]
    assert rows["padding"]["group_by_length"]["pad_fraction"] < rows["padding"]["random"]["pad_fraction"]
    assert rows["padding"]["padding_free"]["tokens_per_second"] > 0 and rows["padding"]["padding_free_ratio"] > 0
    assert rows["judged_kl"]["rows"] == 16 + 16 and rows["judged_kl"]["max_abs_difference"] < 1e-2
    assert "## padding" in (tmp_path / "results.md").read_text()
