"""Racing prompt variants on the development slice, and a choice that accounts for noise.

Scoring every variant on every development example spends most of the search on variants that
are clearly worse after a few dozen examples, and taking the best mean of many noisy variants
rewards luck (the winner's bonus grows with the number of variants). So:

- **The race** (Optuna's `WilcoxonPruner`, built for costly evaluations over a set of instances):
  variants are scored simplest first, each on growing prefixes of the development slice
  (`n_startup_steps` examples per task, then twice as many, up to the whole slice); after each
  prefix a Wilcoxon signed-rank test against the best variant scored in full drops the variant
  if it is worse at `p_threshold`. The zero-shot variants cost one pass each and set a strong bar
  early, so the k-shot ones (a pass per draw) mostly stop after their first prefix.
- **The choice** among the variants that finished: the simplest one whose development mean is
  within one standard error of the leader's (the "one-standard-error rule"), where the standard
  error of the difference counts the examples (paired) and, for k-shot variants, the spread of
  their draws. Complexity is the number of demonstrations: a simpler prompt is preferred unless a
  more complex one is better by more than its uncertainty. (Counting calibration as complexity
  too made the choice weaker on held-apart data: docs/protocol.md.)

Scoring is the caller's (`score_prefix`), so the race and the rule are tested on constructed scores.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import optuna

log = logging.getLogger(__name__)


@dataclass
class Raced:
    """One variant's development scores: by_draw[d][i] is example i's score under draw d (all
    tasks one after the other); predictions likewise, for the share of the top answer."""
    variant: object
    by_draw: list[list[float]] = field(default_factory=list)
    predictions: list[list] = field(default_factory=list)
    task_of: list[int] = field(default_factory=list)  # the task (its position) of each example
    pruned_at: int | None = None   # examples per task scored when the race dropped it

    @property
    def complete(self) -> bool:
        return self.pruned_at is None

    @property
    def n(self) -> int:
        return len(self.by_draw[0]) if self.by_draw else 0

    def per_example(self) -> np.ndarray:
        """Each example's score, averaged over the draws (what a paired comparison pairs)."""
        return np.mean(np.array(self.by_draw, dtype=float), axis=0)

    def mean(self) -> float:
        return float(np.mean(self.per_example()))

    def draw_sd(self) -> float:
        """The spread (sd) of the draws' means; 0 with one draw."""
        means = [float(np.mean(d)) for d in self.by_draw]
        return float(np.std(means, ddof=1)) if len(means) > 1 else 0.0

    def top_share(self) -> float | None:
        """The share of the examples given the most frequent answer, mean over draws."""
        shares = [Counter(p).most_common(1)[0][1] / len(p) for p in self.predictions if p and None not in p]
        return float(np.mean(shares)) if shares else None

    def extend(self, by_draw: list[list[float]], predictions: list[list], task_of: list[int]) -> None:
        self.by_draw = [[*a, *b] for a, b in zip(self.by_draw, by_draw)] if self.by_draw else [list(d) for d in by_draw]
        self.predictions = [[*a, *b] for a, b in zip(self.predictions, predictions)] if self.predictions \
            else [list(p) for p in predictions]
        self.task_of += task_of

    def task(self, t: int) -> Raced:
        """The record of one task's examples."""
        keep = [i for i, task in enumerate(self.task_of) if task == t]
        return Raced(self.variant, [[d[i] for i in keep] for d in self.by_draw],
                     [[p[i] for i in keep] for p in self.predictions], [t] * len(keep), self.pruned_at)


def complexity(variant) -> int:
    """More demonstrations make a prompt more complex: each draw of them is a choice that can be
    lucky, and their spread is part of the uncertainty. Templates and calibration (a fixed
    correction, nothing drawn or fitted) are alternatives at the same level."""
    return variant.num_fewshot


def uncertainty(a: Raced, b: Raced) -> float:
    """Standard error of mean(a) - mean(b): paired over examples, plus each one's spread of draws."""
    d = a.per_example() - b.per_example()
    paired = float(np.var(d, ddof=1)) / len(d) if len(d) > 1 else 0.0
    return math.sqrt(paired + a.draw_sd() ** 2 / len(a.by_draw) + b.draw_sd() ** 2 / len(b.by_draw))


def choose(done: list[Raced]) -> Raced:
    """The simplest variant within one standard error of the leader (`done`: simplest first; ties
    go to the earlier one)."""
    leader = max(done, key=Raced.mean)
    for level in sorted({complexity(r.variant) for r in done}):
        best = max((r for r in done if complexity(r.variant) == level), key=Raced.mean)
        if leader.mean() - best.mean() <= uncertainty(leader, best):
            return best
    return leader


def prefixes(dev_size: int, first: int) -> list[int]:
    """Examples per task after each look: first, 2 x first, ... then the whole slice."""
    looks, n = [], max(1, first)
    while n < dev_size:
        looks.append(n)
        n *= 2
    return looks + [dev_size]


def race(units: list[list], score_prefix, dev_size: int, n_tasks: int, p_threshold: float,
         n_startup_steps: int) -> list[Raced]:
    """Race `units` (lists of variants scored by one pass, simplest first) on the development slice.

    `score_prefix(unit, start, stop)` scores examples start..stop of every task's slice and returns
    {variant: (by_draw, predictions)} for the unit's variants. Returns every variant's record,
    in the order of `units`; a dropped one has `pruned_at` set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        pruner = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=n_startup_steps * n_tasks)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", pruner=pruner)
        out = []
        for unit in units:
            out += _run_unit(study, unit, score_prefix, dev_size, n_tasks, n_startup_steps)
        return out
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_unit(study, unit: list, score_prefix, dev_size: int, n_tasks: int, first: int) -> list[Raced]:
    records = {v: Raced(v) for v in unit}
    trials = {v: study.ask() for v in unit}
    start = 0
    for stop in prefixes(dev_size, first):
        live = [v for v in unit if records[v].complete]
        if not live:
            break
        scored = score_prefix(unit, start, stop)
        width = stop - start
        for v in live:
            r, trial = records[v], trials[v]
            by_draw, predictions = scored[v]  # (the tasks one after the other)
            r.extend(by_draw, predictions, [j // width for j in range(len(by_draw[0]))])
            for j, value in enumerate(np.mean(np.array(by_draw, dtype=float), axis=0)):
                trial.report(float(value), (j // width) * dev_size + start + j % width)  # instance: task, example
            if stop < dev_size and trial.should_prune():
                r.pruned_at = stop
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                log.info("race: %s dropped after %d development examples (%.4f, clearly below the best)",
                         v.label(), stop, r.mean())
        start = stop
    for v in unit:
        if records[v].complete:
            study.tell(trials[v], records[v].mean())
            log.info("race: %s scored on all %d development examples: %.4f", v.label(), dev_size, records[v].mean())
    return [records[v] for v in unit]
