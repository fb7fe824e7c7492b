"""Which settings mattered, with uncertainty: each hyperparameter's share of the variance in the
development score, from Optuna's fANOVA evaluator on a study built from the runs (so a Hydra grid
qualifies as an Optuna study does), with an interval.

Why more than `optuna.importance.get_param_importances`: its shares are point estimates, always
positive and summing to one, so a setting that does nothing still gets a share (the forest splits on
noise), and W&B's and Optuna's dashboards rank such shares as they come. Here every setting gets a
shadow, its own values shuffled across the runs (a setting with no effect by construction, Boruta's
idea), and the share a setting gets *beyond its shadow's* is bootstrapped over the runs: a setting
matters when that excess's 90% interval lies above zero; a setting whose interval holds zero shows
no effect the runs can tell from noise. A `seed` axis (seed replicates) is one such setting: its
share is what the seed alone moves the score. What no interval fixes: settings that move together
in the runs (TPE's later trials, a hand-picked set) share the credit, so the reading is safest on
a grid.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd

from analysis.runs import value
from analysis.summary import is_adapter
from sweep.data.splits import DEV_PREFIX

GROUPS = ("lora.", "train.", "method.", "prompt.", "data.max_train_samples", "seed")  # swept settings
BOOTSTRAP = 40      # resamples of the runs
LEVEL = 0.90        # the interval's coverage
MIN_RUNS = 6        # fewer runs tell nothing about importance
SHADOW = "shadow:"


def settings(runs: list[dict]) -> dict[str, list]:
    """The swept settings that vary across `runs` ({key: value per run}), numbers where every value is one."""
    out = {}
    for col in sorted({c for r in runs for c in r if c.startswith("params.")}):
        key = col[len("params."):]
        if not key.startswith(GROUPS):
            continue
        raw = [str(r.get(col)) for r in runs]
        if len(set(raw)) < 2:
            continue
        try:
            numbers = [float(v) for v in raw]
        except ValueError:
            numbers = None
        out[key] = numbers if numbers is not None and not any(map(math.isnan, numbers)) else raw
    return out


def distribution(values: list):
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if all(isinstance(v, float) for v in values):
        low, high = min(values), max(values)
        return FloatDistribution(low, high, log=low > 0 and high / low >= 10)
    return CategoricalDistribution(sorted(set(values)))


def shares(columns: dict[str, list], scores: list[float], seed: int) -> dict[str, float]:
    """fANOVA's variance shares of `columns` and their shadows on one sample of runs."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    shuffled = random.Random(seed)
    shadows = {SHADOW + k: shuffled.sample(v, len(v)) for k, v in columns.items()}
    every = columns | shadows
    dists = {k: distribution(v) for k, v in every.items()}
    study = optuna.create_study(direction="maximize")
    for i, score in enumerate(scores):
        study.add_trial(optuna.trial.create_trial(params={k: v[i] for k, v in every.items()}, distributions=dists,
                                                  value=score))
    if len(set(scores)) < 2:
        return {}  # (every run scored alike: no setting moved the score; fANOVA refuses zero variance)
    return get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))


def importances(columns: dict[str, list], scores: list[float], bootstrap: int = BOOTSTRAP,
                seed: int = 0) -> pd.DataFrame:
    """Per setting: its share (on all runs), and the bootstrap interval of its share beyond its shadow's."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    point = shares(columns, scores, seed)
    pick = np.random.default_rng(seed)
    excess = {k: [] for k in columns}
    for b in range(bootstrap):
        rows = pick.integers(0, len(scores), len(scores))
        # (a setting that does not vary in a resample says nothing of itself there)
        sample = {k: picked for k, v in columns.items() if len(set(picked := [v[i] for i in rows])) > 1}
        if not sample:
            continue
        got = shares(sample, [scores[i] for i in rows], seed + b + 1)
        for k in sample:
            excess[k].append(got.get(k, 0.0) - got.get(SHADOW + k, 0.0))
    tail = (1 - LEVEL) / 2
    out = []
    for k in columns:
        low, high = (np.quantile(excess[k], [tail, 1 - tail]) if excess[k] else (math.nan, math.nan))
        out.append({"setting": k, "share": point.get(k, 0.0), "excess_low": float(low), "excess_high": float(high),
                    "matters": bool(low > 0)})
    return pd.DataFrame(out).sort_values("share", ascending=False, ignore_index=True)


def importance_view(done: pd.DataFrame, metric: str) -> tuple[str, pd.DataFrame, str] | None:
    """The report's table for one task metric: the adapters' settings against their development score."""
    runs = [r for _, r in done.iterrows() if is_adapter(r) and value(r, f"metrics.{DEV_PREFIX}{metric}") is not None]
    if len(runs) < MIN_RUNS:
        return None
    columns = settings([r.to_dict() for r in runs])
    if not columns:
        return None
    table = importances(columns, [value(r, f"metrics.{DEV_PREFIX}{metric}") for r in runs])
    shown = pd.DataFrame({
        "setting": table["setting"], "share of the variance": table["share"].map("{:.2f}".format),
        f"beyond its shadow ({LEVEL:.0%} interval)": [f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in
                                                      zip(table["excess_low"], table["excess_high"])],
        "matters": table["matters"].map({True: "yes", False: "no evidence"})})
    note = (f"fANOVA (Optuna's evaluator) on the {len(runs)} adapters' development {metric}, with every setting's "
            "shadow (its values shuffled across the runs: no effect by construction); a setting matters when the "
            f"{LEVEL:.0%} bootstrap interval of its share beyond its shadow's lies above zero. A `seed` row is the "
            "seed's own effect: the noise any other setting must beat.")
    return f"{metric}: which settings mattered (development scores)", shown, note
