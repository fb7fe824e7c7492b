"""The verdict: did fine-tuning pay off against the strongest prompting baseline, and how sure are we?

Each adapter is compared with the strongest baseline on the test examples, paired per example
(analysis/stats.py: McNemar's exact test for 0/1 scores, a paired permutation test otherwise; a
95% paired-bootstrap interval). Comparing several adapters with one baseline is a family of tests
in which the best of N wins by luck more often as N grows, so every p-value is Holm-corrected
across all adapters and tasks compared. A real difference can still be too small to matter: the
practical margin `eval.margin` m (0.01) is the smallest difference worth acting on. The verdict,
the first that holds (each test Holm-corrected, at 5%):

- "equivalent within ±m": two one-sided t-tests (TOST) on the paired differences reject |d| >= m
  (their sd at least sqrt(3/n): no disagreement among a few examples is no proof of none);
- "better": the paired test rejects d = 0 and d > 0;
- "not better": a one-sided t-test rejects d >= m (significantly worse included);
- "inconclusive": then about how many more test examples would decide it, at the observed
  difference and spread with 80% power (normal approximation, at the Bonferroni level: the
  strictest Holm can ask).

scipy has no Holm correction; `holm` is the 1979 step-down procedure, a few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

from analysis.stats import paired_compare
from sweep.tracking.records import VERDICT_PREFIX, VERDICT_TAG_PREFIX

ALPHA = 0.05
POWER = 0.8
DEFAULT_MARGIN = 0.01  # eval.margin's default, for runs recorded before it existed


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down; each at most 1, monotone in the raw order)."""
    n = len(p_values)
    adjusted, running = [1.0] * n, 0.0
    for rank, i in enumerate(sorted(range(n), key=p_values.__getitem__)):
        running = max(running, min(1.0, (n - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def spread(diffs: np.ndarray) -> float:
    """The sd of the per-example differences, at least sqrt(3/n): n examples without a disagreement
    bound the share of disagreements below 3/n (the rule of three), not at 0, so agreeing on a few
    examples is not taken for certainty."""
    n = len(diffs)
    return max(float(np.std(diffs, ddof=1)) if n > 1 else 0.0, math.sqrt(3 / n))


def one_sided_p(diffs: np.ndarray, bound: float, alternative: str) -> float:
    """p-value of a one-sample t-test that the mean of `diffs` is above ("greater") or below ("less")
    `bound` (scipy's `ttest_1samp`, with the sd floored by `spread`)."""
    n = len(diffs)
    t = (float(np.mean(diffs)) - bound) / (spread(diffs) / math.sqrt(n))
    dist = sps.t(df=max(n - 1, 1))
    return float(dist.sf(t) if alternative == "greater" else dist.cdf(t))


def tost_p(diffs: np.ndarray, margin: float) -> float:
    """Two one-sided tests: the p-value of equivalence, |mean difference| < margin."""
    return max(one_sided_p(diffs, -margin, "greater"), one_sided_p(diffs, margin, "less"))


def examples_needed(diff: float, sd: float, margin: float, alpha: float, power: float = POWER) -> int | None:
    """Test examples at which the observed difference and spread would be decided with `power`:
    shown better than 0 (two-sided, when diff > 0) or shown below the margin (one-sided, when
    diff < margin), whichever takes fewer; None when neither applies."""
    z = sps.norm.ppf
    candidates = []
    if diff > 0:
        candidates.append(((z(1 - alpha / 2) + z(power)) * sd / diff) ** 2)
    if diff < margin:
        candidates.append(((z(1 - alpha) + z(power)) * sd / (margin - diff)) ** 2)
    return math.ceil(min(candidates)) if candidates else None


@dataclass(frozen=True)
class Comparison:
    """One adapter against the strongest baseline on one task's test examples."""
    run_id: str
    run: str
    metric: str           # <task>/<metric>
    baseline: str         # the strongest baseline's run name
    margin: float
    n: int
    diff: float           # adapter - baseline
    ci_low: float
    ci_high: float
    sd: float             # of the per-example differences (`spread`)
    p: float              # paired test (McNemar / permutation), raw
    p_equivalent: float   # TOST, raw
    p_below: float        # one-sided t-test of diff < margin, raw
    available: int | None = None  # test examples the task has (more can be scored up to this)
    p_holm: float = math.nan
    p_equivalent_holm: float = math.nan
    p_below_holm: float = math.nan
    family: int = 1

    @property
    def verdict(self) -> str:
        if self.p_equivalent_holm < ALPHA:
            return "equivalent"
        if self.p_holm < ALPHA and self.diff > 0:
            return "better"
        if self.p_below_holm < ALPHA or (self.p_holm < ALPHA and self.diff < 0):
            return "not better"
        return "inconclusive"

    @property
    def more_examples(self) -> int | None:
        """About how many more test examples would decide an inconclusive comparison."""
        if self.verdict != "inconclusive":
            return None
        needed = examples_needed(self.diff, self.sd, self.margin, ALPHA / self.family)
        return None if needed is None else max(needed - self.n, 1)

    def sentence(self) -> str:
        """e.g. 'better: +0.060 [+0.031, +0.089] vs strongest_baseline=zero_shot-cal-plain, p (Holm) 0.0004'."""
        verdict = {"equivalent": f"equivalent within ±{self.margin:g}"}.get(self.verdict, self.verdict)
        line = (f"{verdict}: {self.diff:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] vs {self.baseline}, "
                f"p (Holm, {self.family} compared) {self.p_holm:.2g}")
        if self.more_examples is not None:
            left = f"; the task has {self.available - self.n:,} more" if self.available else ""
            line += f"; about {self.more_examples:,} more test examples would decide it{left}"
        return line


def compare(run_id: str, run: str, metric: str, baseline: str, adapter_scores: dict, baseline_scores: dict,
            margin: float, available: int | None = None) -> Comparison | None:
    """The raw comparison of per-example scores ({example id: score}); None when none are shared."""
    pair = paired_compare(adapter_scores, baseline_scores)
    if pair is None:
        return None
    ids = sorted(set(adapter_scores) & set(baseline_scores), key=str)
    diffs = np.array([float(adapter_scores[i]) - float(baseline_scores[i]) for i in ids])
    sd = spread(diffs)
    return Comparison(run_id, run, metric, baseline, margin, pair.n, pair.diff, pair.ci_low, pair.ci_high, sd,
                      pair.p_value, tost_p(diffs, margin), one_sided_p(diffs, margin, "less"), available)


def corrected(family: list[Comparison]) -> list[Comparison]:
    """The family's comparisons with Holm-adjusted p-values (all adapters and tasks compared)."""
    if not family:
        return []
    adjusted = [holm([getattr(c, key) for c in family]) for key in ("p", "p_equivalent", "p_below")]
    return [replace(c, p_holm=a, p_equivalent_holm=b, p_below_holm=d, family=len(family))
            for c, a, b, d in zip(family, *adjusted)]


def metrics_of(c: Comparison) -> dict[str, float]:
    """What an adapter run records of its verdict (MLflow metrics verdict/<task>/<metric>/...)."""
    base = f"{VERDICT_PREFIX}{c.metric}/"
    out = {base + "diff": c.diff, base + "ci_low": c.ci_low, base + "ci_high": c.ci_high, base + "p_holm": c.p_holm}
    return out | ({base + "more_examples": float(c.more_examples)} if c.more_examples is not None else {})


def tags_of(c: Comparison) -> dict[str, str]:
    """The verdict as tags: `verdict.<task>/<metric>` (one word) and its sentence."""
    return {f"{VERDICT_TAG_PREFIX}{c.metric}": c.verdict, f"{VERDICT_TAG_PREFIX}{c.metric}.detail": c.sentence()}
