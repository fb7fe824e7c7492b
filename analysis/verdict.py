"""The verdict: did fine-tuning pay off against the strongest prompting baseline, and how sure are we?

One claim per task, stated before the test examples are scored: *the configuration the development
scores choose beats the baseline the development scores choose*. That is the **primary** comparison;
the only multiplicity is across the tasks of the sweep (Bonferroni: level alpha / tasks). Every other
adapter is **secondary**, shown below it and corrected among themselves the same way.

The interval and the decision are one procedure at one level: a paired percentile bootstrap of the
mean difference (adapter - baseline) on the test examples, at 1 - alpha/family, and

- "better" exactly when the interval lies above 0, "worse" when it lies below 0;
- "equivalent within ±m" when it lies inside (-m, +m), m = `eval.margin`;
- "inconclusive" otherwise.

When the chosen configuration was retrained with fresh seeds (`confirm.py`), the bootstrap resamples
seeds and examples together (a seed x example paired bootstrap, as analysis/crossover.py does): the
claim is then about the configuration, not about one trained adapter, and the verdict says which.

Each verdict also states the smallest difference its test size detects with 80% power at the level
used (from the bootstrap's standard error: what the design can resolve, not a promise about more
data), and how many test examples equivalence within the margin would need. With fewer than
SMALL_SAMPLE test examples the percentile interval's coverage falls below nominal (for 0/1 scores
it misses more often than it says: tests/test_verdict.py shows it), and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

from analysis.sequential import Sequential, in_reading_order, sequential
from sweep.vocabulary import VERDICT_PREFIX, VERDICT_TAG_PREFIX

ALPHA = 0.05
POWER = 0.8
RESAMPLES = 10_000
SMALL_SAMPLE = 100  # fewer test examples: the percentile bootstrap under-covers (said in the verdict)
DEFAULT_MARGIN = 0.01  # eval.margin's default, for runs recorded before it existed
PRIMARY, SECONDARY = "primary", "secondary"


def percent(level: float) -> str:
    """0.95 -> '95%', 0.975 -> '97.5%'."""
    return f"{level:.1%}".replace(".0%", "%")


def bootstrap(adapter: np.ndarray, baseline: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of mean(adapter - baseline): `adapter` is seeds x examples, `baseline`
    one score per example; seeds and examples resampled together (one seed: examples only)."""
    diffs = np.atleast_2d(np.asarray(adapter, dtype=float)) - np.asarray(baseline, dtype=float)[None, :]
    k, n = diffs.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, 1000):  # (chunks: 1,000 x n weights at a time)
        b = min(1000, resamples - start)
        seeds = rng.multinomial(k, [1 / k] * k, size=b) / k if k > 1 else np.ones((b, 1))
        examples = rng.multinomial(n, [1 / n] * n, size=b) / n
        out[start:start + b] = ((seeds @ diffs) * examples).sum(axis=1)
    return out


@dataclass(frozen=True)
class Comparison:
    """One adapter (or configuration, over seeds) against the chosen baseline on one task's test examples."""
    run_id: str
    run: str
    metric: str           # <task>/<metric>
    baseline: str         # the chosen baseline's run name
    margin: float
    n: int                # test examples both scored
    seeds: int            # training seeds pooled (1: a claim about this adapter)
    diff: float           # mean over seeds and examples of adapter - baseline
    se: float             # the bootstrap's standard error of `diff`
    distribution: tuple = ()  # the bootstrap's draws (kept for the interval at any level)
    seed_means: tuple = ()    # the adapter's score per seed
    available: int | None = None  # test examples the task has
    role: str = PRIMARY
    family: int = 1
    diffs: tuple = ()         # adapter (mean over seeds) - baseline per test example, of the examples `ids`
    ids: tuple = ()           # the test examples' ids (lm-eval's doc_id)
    stopped: Sequential | None = None  # the sequential verdict, when it decides (eval.sequential)
    searched: str = ""        # what the baseline was chosen among (its tag baseline.search), named in the claim

    def read_sequentially(self, block: int, seed: int, pool: int) -> Comparison:
        """This comparison decided by the sequential verdict (analysis/sequential.py): the examples
        read in blocks, in the order `seed` fixes over the `pool` test examples a test pass scores (a
        pass that settle.py stopped scored the first of them), at the same level and margin."""
        keep = [i for i, e in enumerate(self.ids) if 0 <= e < pool]  # (a shared store: ids out of range dropped)
        diffs = in_reading_order([self.ids[i] for i in keep], [self.diffs[i] for i in keep], pool, seed)
        return replace(self, stopped=sequential(diffs, 1 - self.level, self.margin, block, pool))

    @property
    def level(self) -> float:
        """The interval's confidence: 1 - alpha / family (Bonferroni within its role)."""
        return 1 - ALPHA / self.family

    @property
    def interval(self) -> tuple[float, float]:
        tail = (1 - self.level) / 2
        low, high = np.quantile(self.distribution, [tail, 1 - tail]) if len(self.distribution) else (self.diff,) * 2
        return float(low), float(high)

    @property
    def verdict(self) -> str:
        if self.stopped is not None:
            return self.stopped.verdict
        low, high = self.interval
        if low > 0:
            return "better"
        if high < 0:
            return "worse"
        if -self.margin < low and high < self.margin:
            return "equivalent"
        return "inconclusive"

    @property
    def detectable(self) -> float:
        """The smallest true difference this test size finds (interval above 0) with 80% power."""
        return (sps.norm.ppf(1 - (1 - self.level) / 2) + sps.norm.ppf(POWER)) * self.se

    @property
    def equivalence_needs(self) -> int | None:
        """Test examples at which a true difference of 0 shows as equivalent within the margin with
        80% power (None for a zero margin)."""
        if self.margin <= 0 or not self.n:
            return None
        z = sps.norm.ppf(1 - (1 - self.level) / 2) + sps.norm.ppf(POWER)
        return math.ceil(self.n * (z * self.se / self.margin) ** 2)

    def claim(self) -> str:
        return (f"a claim about the configuration ({self.seeds} training seeds)" if self.seeds > 1
                else "a claim about this adapter (one training seed)")

    def sentence(self) -> str:
        """e.g. 'better: +0.080 [+0.041, +0.118] (95% paired bootstrap, 400 test examples) vs
        strongest_baseline=zero_shot-cal-plain; detects ±0.047 at 80% power'; a sequential verdict
        first says where it stopped, then what the fixed-size test over every example says."""
        if self.stopped is not None:
            fixed = replace(self, stopped=None)
            return f"{self.stopped.sentence()}; the fixed-size test over all {self.n} scored: {fixed.sentence()}"
        low, high = self.interval
        verdict = {"equivalent": f"equivalent within ±{self.margin:g}"}.get(self.verdict, self.verdict)
        over = f"{self.n} test examples" + (f" x {self.seeds} seeds" if self.seeds > 1 else "")
        line = (f"{verdict}: {self.diff:+.3f} [{low:+.3f}, {high:+.3f}] ({percent(self.level)} paired bootstrap, "
                f"{over}) vs {self.baseline}{f', {self.searched}' if self.searched else ''}; "
                f"detects ±{self.detectable:.3f} at {POWER:.0%} power")
        needs = self.equivalence_needs
        if self.verdict != "equivalent" and needs and needs > self.n:
            have = f"; the task has {self.available:,}" if self.available else ""
            line += f"; equivalence within ±{self.margin:g} would need about {needs:,} test examples{have}"
        if self.n < SMALL_SAMPLE:
            line += f"; under {SMALL_SAMPLE} examples the interval covers less than its nominal {percent(self.level)}"
        return line


def compare(run_id: str, run: str, metric: str, baseline: str, adapter_scores: dict | list[dict],
            baseline_scores: dict, margin: float, available: int | None = None,
            resamples: int = RESAMPLES) -> Comparison | None:
    """The comparison of per-example scores ({example id: score}; a list of them, one per training
    seed, for a configuration) on the examples every one of them scored; None when there are none."""
    per_seed = adapter_scores if isinstance(adapter_scores, list) else [adapter_scores]
    ids = set(baseline_scores).intersection(*per_seed)
    if not ids or not per_seed:
        return None
    ids = sorted(ids, key=str)
    adapter = np.array([[float(s[i]) for i in ids] for s in per_seed])
    base = np.array([float(baseline_scores[i]) for i in ids])
    draws = bootstrap(adapter, base, resamples)
    return Comparison(run_id, run, metric, baseline, margin, len(ids), len(per_seed),
                      float(np.mean(adapter - base)), float(np.std(draws, ddof=1)), tuple(draws),
                      tuple(float(m) for m in adapter.mean(axis=1)), available,
                      diffs=tuple(adapter.mean(axis=0) - base), ids=tuple(ids))


def corrected(family: list[Comparison], role: str = PRIMARY) -> list[Comparison]:
    """The comparisons of one role with its family size (the interval's level: 1 - alpha/size)."""
    return [replace(c, role=role, family=len(family)) for c in family]


def metrics_of(c: Comparison) -> dict[str, float]:
    """What an adapter run records of its verdict (MLflow metrics verdict/<task>/<metric>/...)."""
    base = f"{VERDICT_PREFIX}{c.metric}/"
    low, high = c.interval
    stopped = {base + "sequential_examples": float(c.stopped.used), base + "sequential_low": c.stopped.low,
               base + "sequential_high": c.stopped.high} if c.stopped is not None else {}
    return {base + "diff": c.diff, base + "ci_low": low, base + "ci_high": high, base + "level": c.level,
            base + "detectable": c.detectable, base + "seeds": float(c.seeds)} | stopped


def tags_of(c: Comparison) -> dict[str, str]:
    """The verdict as tags: `verdict.<task>/<metric>` (one word), its sentence, and its role."""
    prefix = f"{VERDICT_TAG_PREFIX}{c.metric}"
    return {prefix: c.verdict, f"{prefix}.detail": c.sentence(), f"{prefix}.role": c.role}
