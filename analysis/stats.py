"""Paired comparison of two runs scored on the same examples (scipy.stats).

Two runs of one task see the same validation examples, so their per-example scores are paired:
a paired test is far more sensitive than comparing two means with their standard errors. For 0/1
scores (accuracy) McNemar's exact test looks only at the examples where the two runs disagree (a
binomial test of the discordant counts, `scipy.stats.binomtest`); for other scores (ROUGE-L, or
accuracies averaged over several draws of demonstrations) a paired permutation test
(`scipy.stats.permutation_test`, signs of the differences flipped). The 95% interval of the
difference is a paired percentile bootstrap (`scipy.stats.bootstrap(paired=True)`) in both cases.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mlflow
import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Paired:
    n: int                # examples both runs scored
    diff: float           # mean(a) - mean(b)
    ci_low: float         # 95% paired-bootstrap interval of diff
    ci_high: float
    p_value: float
    test: str             # "McNemar" | "paired permutation"


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial with p = 1/2)."""
    n = a_only + b_only
    return 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)


def _mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def paired_compare(a: dict, b: dict, n_resamples: int = 2000, seed: int = 0) -> Paired | None:
    """Compare per-example scores `a` and `b` (dicts keyed by example id) on their common examples;
    None when they share none."""
    ids = sorted(set(a) & set(b), key=str)
    if not ids:
        return None
    xa, xb = np.array([float(a[i]) for i in ids]), np.array([float(b[i]) for i in ids])
    diff = float(np.mean(xa - xb))
    low = high = diff
    if len(ids) > 1 and np.ptp(xa - xb) > 0:
        ci = stats.bootstrap((xa, xb), _mean_diff, paired=True, vectorized=True, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    if np.isin(np.concatenate([xa, xb]), (0.0, 1.0)).all():
        return Paired(len(ids), diff, low, high, mcnemar_exact(int(np.sum(xa > xb)), int(np.sum(xb > xa))), "McNemar")
    if not np.any(xa != xb):
        return Paired(len(ids), diff, low, high, 1.0, "paired permutation")
    test = stats.permutation_test((xa, xb), _mean_diff, permutation_type="samples", vectorized=True,
                                  n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return Paired(len(ids), diff, low, high, float(test.pvalue), "paired permutation")


@functools.cache
def logged_results(run_id: str) -> dict:
    """lm-eval's results of a run, per-example records included, read once ({} when it has none)."""
    try:
        results = mlflow.artifacts.load_dict(f"runs:/{run_id}/lm_eval_results.json")
    except Exception:  # noqa: BLE001  (a run logged without results: no paired test, no crash)
        return {}
    return results if isinstance(results, dict) else {}


def logged_samples(run_id: str) -> dict:
    """lm-eval's per-example records of a run ({task: [sample, ...]})."""
    samples = logged_results(run_id).get("samples", {})
    return samples if isinstance(samples, dict) else {}


def examples_available(run_id: str, task: str) -> int | None:
    """How many test examples the task has (lm-eval's `n-samples.original`; `eval.limit` scores fewer)."""
    n = (logged_results(run_id).get("n-samples") or {}).get(task, {})
    value = n.get("original") if isinstance(n, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def samples(run_id: str, task: str, metric: str) -> dict:
    """{doc_id: score} of one run on one task (the store is shared: records that are not an id
    and a number are left out)."""
    out = {}
    for s in logged_samples(run_id).get(task, []):
        if isinstance(s, dict) and isinstance(s.get("doc_id"), int) and isinstance(s.get(metric), (int, float)):
            out[s["doc_id"]] = float(s[metric])
    return out


def compare_runs(run_id: str, reference_id: str, task: str, metric: str) -> Paired | None:
    """Two runs on one task's metric, paired on the examples both logged; None when they share none."""
    return paired_compare(samples(run_id, task, metric), samples(reference_id, task, metric))
