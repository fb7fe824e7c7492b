"""Where fine-tuning overtakes prompting: n*, the number of labelled examples at which the adapter's
test score passes the strongest prompt-only or in-context baseline's, given the same labelled pool
(`experiment=crossover`: adapters on `data.max_train_samples` examples, baselines whose
demonstrations come from those very examples, `eval.fewshot_pool=trained`, a few seeds each).

Why our own estimate: no library estimates a crossing of two learning curves with its uncertainty.
The curves are each arm's mean test score over seeds at each training size; n* is where their
difference turns positive for good (the last sign change, interpolated linearly in log n). Its
interval is a percentile bootstrap that resamples both sources of noise at once: the seeds (which
examples were labelled, the adapter's initialisation, the demonstrations drawn; resampled jointly
for both arms, which share each seed's pool) and the test examples (resampled jointly for every
run, so the arms stay paired). A resample in which the adapter never overtakes gives n* beyond the
largest size tried, and the interval says so rather than clipping it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import plots
from analysis.leakage import flagged
from analysis.runs import STRONGEST, cell, is_adapter, value
from analysis.stats import samples
from analysis.summary import POOL, SIZE
from sweep.vocabulary import METHOD, tag_column

RESAMPLES = 2000
LEVEL = 0.95
MIN_SIZES = 2       # training sizes an adapter curve needs before a crossing means anything

Scores = dict[tuple[int | None, int], dict[int, float]]  # (training size or None: any, seed) -> {doc_id: score}


@dataclass
class Curves:
    sizes: list[int]
    adapter: np.ndarray            # rows: mean, low, high (the band) at each size
    baseline: np.ndarray
    n_star: float                  # sizes[0] when ahead from the start, inf when never ahead
    interval: tuple[float, float]
    seeds: int
    examples: int
    resamples: int


def crossing(sizes: list[int], diff: np.ndarray) -> float:
    """The size from which the adapter stays ahead (`diff` = adapter - baseline at each size), by
    linear interpolation in log size between the last size behind and the next; sizes[0] when it
    is ahead at every size, inf when it is not ahead at the largest."""
    behind = np.flatnonzero(diff <= 0)
    if behind.size == 0:
        return float(sizes[0])
    k = behind[-1]
    if k == len(sizes) - 1:
        return math.inf
    t = -diff[k] / (diff[k + 1] - diff[k])
    return float(math.exp(math.log(sizes[k]) + t * (math.log(sizes[k + 1]) - math.log(sizes[k]))))


def run_at(scores: Scores, size: int, seed: int) -> dict[int, float] | None:
    """The run of `seed` at `size`; a size of None in `scores` (a baseline whose pool is the whole
    split) stands for every size."""
    return scores.get((size, seed), scores.get((None, seed)))


def arrays(scores: Scores, sizes: list[int], seeds: list[int], docs: list[int]) -> np.ndarray:
    """[size, seed, example] scores."""
    out = np.empty((len(sizes), len(seeds), len(docs)))
    for i, n in enumerate(sizes):
        for j, s in enumerate(seeds):
            run = run_at(scores, n, s)
            out[i, j] = [run[d] for d in docs]
    return out


def usable_seeds(scores: Scores, sizes: list[int]) -> set[int]:
    return {s for _, s in scores if all(run_at(scores, n, s) is not None for n in sizes)}


def estimate(adapter: Scores, baseline: Scores, resamples: int = RESAMPLES, seed: int = 0,
             leaked: set[int] = frozenset()) -> Curves | None:
    """n* and both curves with their bands, from per-example test scores (without the `leaked` ones);
    None when the runs do not give two training sizes with the same seeds and examples for both arms."""
    sizes = sorted({n for n, _ in adapter if n is not None})
    if len(sizes) < MIN_SIZES:
        return None
    a_seeds, b_seeds = usable_seeds(adapter, sizes), usable_seeds(baseline, sizes)
    shared = sorted(a_seeds & b_seeds)
    a_seeds, b_seeds = (shared, shared) if shared else (sorted(a_seeds), sorted(b_seeds))
    if not a_seeds or not b_seeds:
        return None
    runs = [run_at(adapter, n, s) for n in sizes for s in a_seeds] + \
        [run_at(baseline, n, s) for n in sizes for s in b_seeds]
    docs = sorted(set.intersection(*(set(r) for r in runs)) - set(leaked))
    if not docs:
        return None
    a, b = arrays(adapter, sizes, a_seeds, docs), arrays(baseline, sizes, b_seeds, docs)
    rng = np.random.default_rng(seed)
    boot_a, boot_b, stars = np.empty((resamples, len(sizes))), np.empty((resamples, len(sizes))), np.empty(resamples)
    for r in range(resamples):
        examples = rng.integers(len(docs), size=len(docs))
        sa = rng.integers(len(a_seeds), size=len(a_seeds))
        sb = sa if shared else rng.integers(len(b_seeds), size=len(b_seeds))  # (a seed is one pool for both arms)
        boot_a[r] = a[:, sa][:, :, examples].mean(axis=(1, 2))
        boot_b[r] = b[:, sb][:, :, examples].mean(axis=(1, 2))
        stars[r] = crossing(sizes, boot_a[r] - boot_b[r])
    tails = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    band = lambda mean, boot: np.vstack([mean, *np.quantile(boot, tails, axis=0)])  # noqa: E731
    mean_a, mean_b = a.mean(axis=(1, 2)), b.mean(axis=(1, 2))
    low, high = np.quantile(stars, tails, method="inverted_cdf")  # (inf sorts last: a censored bound stays one)
    return Curves(sizes, band(mean_a, boot_a), band(mean_b, boot_b), crossing(sizes, mean_a - mean_b),
                  (float(low), float(high)), len(a_seeds), len(docs), resamples)


def describe(c: Curves) -> str:
    """n* and its interval in words."""
    def size(n: float) -> str:
        if math.isinf(n):
            return f"beyond {c.sizes[-1]:,} (the largest size tried)"
        if n <= c.sizes[0]:
            return f"at most {c.sizes[0]:,} (the smallest size tried)"
        return f"{n:,.0f}"
    level = f"{LEVEL:.0%} interval over {c.resamples:,} resamples of {c.seeds} seeds and {c.examples} test examples"
    if math.isinf(c.n_star):
        head = f"the adapter does not overtake the baseline up to {c.sizes[-1]:,} labelled examples"
    else:
        head = f"n* = {size(c.n_star)} labelled examples"
    return f"{head} ({level}: {size(c.interval[0])} to {size(c.interval[1])})"


def arm_scores(runs: pd.DataFrame, task: str, name: str, adapters: bool) -> Scores:
    """{(training size, seed): per-example scores} of `runs`; a baseline whose demonstrations come from
    the whole split (not `eval.fewshot_pool=trained`) has size None: it is the same at every size."""
    out = {}
    for _, r in runs.iterrows():
        size, seed = value(r, SIZE), value(r, "params.seed")
        if not adapters and cell(r, POOL, "split") != "trained":
            size = None
        elif size is None:  # (trained on the whole split: no size on the curve)
            continue
        per_example = samples(r["run_id"], task, name) if seed is not None else {}
        if per_example:
            out[(None if size is None else int(size), int(seed))] = per_example  # (later runs win)
    return out


def crossover_view(done: pd.DataFrame, metric: str) -> tuple[list, dict[str, bytes]]:
    """The report's table and figure of the crossover, when adapters were trained on two or more
    sizes and a strongest baseline was scored beside them."""
    if SIZE not in done:
        return [], {}
    adapters = done[[is_adapter(r) for _, r in done.iterrows()]]
    if adapters[SIZE].nunique() < MIN_SIZES:
        return [], {}
    task, name = metric.split("/", 1)
    baselines = done[done[tag_column(METHOD)] == STRONGEST]
    adapter, baseline = arm_scores(adapters, task, name, True), arm_scores(baselines, task, name, False)
    c = estimate(adapter, baseline)
    if c is None:
        return [], {}
    # (every run's audit flags the same test examples: it audits against all either arm could learn from)
    leaked = {f["doc_id"] for f in flagged(adapters.iloc[-1]["run_id"], task)}
    clean = estimate(adapter, baseline, leaked=leaked) if leaked else None
    shown = lambda curve, i: f"{curve[0, i]:.3f} [{curve[1, i]:.3f}, {curve[2, i]:.3f}]"  # noqa: E731
    rows = [{"labelled examples": n, f"adapter {metric}": shown(c.adapter, i),
             f"strongest baseline {metric}": shown(c.baseline, i),
             "adapter - baseline": f"{c.adapter[0, i] - c.baseline[0, i]:+.3f}"} for i, n in enumerate(c.sizes)]
    on_clean = f"On the {clean.examples} test examples the leakage audit left clean: {describe(clean)}. " \
        if clean is not None else ""
    note = (f"{describe(c)}. {on_clean}Each arm's mean test score over seeds at each training size "
            f"(data.max_train_samples), with a {LEVEL:.0%} bootstrap band; the baseline's demonstrations come from "
            "the same labelled examples when it ran with eval.fewshot_pool=trained (else from the whole train split, "
            "the same at every size). n* is where the difference turns positive for good, interpolated in log size.")
    figure = plots.crossover(c.sizes, c.adapter, c.baseline, c.n_star, c.interval, metric)
    return [(f"{metric}: where fine-tuning overtakes prompting (n*)", pd.DataFrame(rows), note)], \
        {f"{metric}: crossover of adapter and baseline": figure}
