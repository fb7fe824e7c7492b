"""Paired comparison of two runs scored on the same examples.

Two runs of one task see the same validation examples, so their per-example scores are paired:
a paired test is far more sensitive than comparing two means with their standard errors. For 0/1
scores (accuracy) we use McNemar's exact test, which looks only at the examples where the two runs
disagree; for other scores (ROUGE-L) a paired bootstrap. The 95% interval of the difference is a
paired bootstrap in both cases. Written here (a few lines) rather than adding scipy/statsmodels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    n: int                # examples both runs scored
    diff: float           # mean(a) - mean(b)
    ci_low: float         # 95% paired-bootstrap interval of diff
    ci_high: float
    p_value: float
    test: str             # "McNemar" | "paired bootstrap"


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial with p = 1/2)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_means(diffs: list[float], n_boot: int, seed: int) -> list[float]:
    rng, n = random.Random(seed), len(diffs)
    return sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))


def paired_compare(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> Paired | None:
    """Compare per-example scores `a` and `b` (dicts keyed by example id) on their common examples;
    None when they share none."""
    ids = sorted(set(a) & set(b), key=str)
    if not ids:
        return None
    xa, xb = [float(a[i]) for i in ids], [float(b[i]) for i in ids]
    diffs = [x - y for x, y in zip(xa, xb)]
    n, mean = len(ids), sum(diffs) / len(ids)
    boot = bootstrap_means(diffs, n_boot, seed)
    low, high = boot[int(0.025 * n_boot)], boot[min(n_boot - 1, int(0.975 * n_boot))]
    if all(x in (0.0, 1.0) for x in xa + xb):
        a_only = sum(1 for x, y in zip(xa, xb) if x > y)
        b_only = sum(1 for x, y in zip(xa, xb) if y > x)
        return Paired(n, mean, low, high, mcnemar_exact(a_only, b_only), "McNemar")
    # Two-sided bootstrap p-value: how often the resampled mean falls on the other side of zero.
    if mean == 0:
        p = 1.0
    else:
        other_side = sum(1 for m in boot if (m <= 0 if mean > 0 else m >= 0))
        p = min(1.0, 2 * (other_side + 1) / (n_boot + 1))
    return Paired(n, mean, low, high, p, "paired bootstrap")
