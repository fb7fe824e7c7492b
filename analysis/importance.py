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

Beside fANOVA's shares: PED-ANOVA's (Optuna's evaluator; which settings the best quarter of the runs
concentrate on, rather than which move the score on average), the interactions of two settings
(a grid's two-way decomposition of cell means, the share of the variance neither setting explains
alone; Optuna's evaluators give main effects only), each with the same shadow and interval, and
which setting, if any, flips the verdict: the adapter chosen by development score among the runs
with each value of a setting, and its verdict against the strongest baseline.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd

from analysis import plots
from analysis.runs import is_adapter, value
from sweep.data.splits import DEV_PREFIX

GROUPS = ("lora.", "train.", "method.", "prompt.", "data.max_train_samples", "seed")  # swept settings
BOOTSTRAP = 40      # resamples of the runs
LEVEL = 0.90        # the interval's coverage
MIN_RUNS = 6        # fewer runs tell nothing about importance
MAX_LEVELS = 8      # a setting with more values than this (a continuous search) has no cells to decompose
PED_QUANTILE = 0.25  # PED-ANOVA's top quantile of runs
SHOWN_PAIRS = 5     # interactions shown
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
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    shuffled = random.Random(seed)
    shadows = {SHADOW + k: shuffled.sample(v, len(v)) for k, v in columns.items()}
    if len(set(scores)) < 2:
        return {}  # (every run scored alike: no setting moved the score; fANOVA refuses zero variance)
    return get_param_importances(study_of(columns | shadows, scores), evaluator=FanovaImportanceEvaluator(seed=seed))


def study_of(columns: dict[str, list], scores: list[float]):
    """An Optuna study holding one finished trial per run (its settings and score)."""
    import optuna

    dists = {k: distribution(v) for k, v in columns.items()}
    study = optuna.create_study(direction="maximize")
    for i, score in enumerate(scores):
        study.add_trial(optuna.trial.create_trial(params={k: v[i] for k, v in columns.items()}, distributions=dists,
                                                  value=score))
    return study


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
        out.append({"setting": k, "share": point.get(k, 0.0), "excess": point.get(k, 0.0) - point.get(SHADOW + k, 0.0),
                    "excess_low": float(low), "excess_high": float(high), "matters": bool(low > 0)})
    return pd.DataFrame(out).sort_values("share", ascending=False, ignore_index=True)


def ped_anova(columns: dict[str, list], scores: list[float]) -> dict[str, float]:
    """PED-ANOVA's importances (Optuna's evaluator) of the settings for reaching the top PED_QUANTILE of runs."""
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    if len(set(scores)) < 2:
        return {}
    quantile = max(PED_QUANTILE, 2 / len(scores))  # (its regimes need two runs each)
    return get_param_importances(study_of(columns, scores),
                                 evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile))


def interaction_share(a: list, b: list, scores: list[float]) -> float:
    """The share of the variance of `scores` in the interaction of settings `a` and `b`: each run's cell
    mean less both settings' level means, plus the grand mean (exact for a balanced grid)."""
    y = pd.Series(scores, dtype=float)
    total = y.var(ddof=0)
    if not total > 0:
        return 0.0
    frame = pd.DataFrame({"a": list(map(str, a)), "b": list(map(str, b)), "y": y})
    cell = frame.groupby(["a", "b"])["y"].transform("mean")
    effect = cell - frame.groupby("a")["y"].transform("mean") - frame.groupby("b")["y"].transform("mean") + y.mean()
    return float((effect ** 2).mean() / total)


def interactions(columns: dict[str, list], scores: list[float], bootstrap: int = BOOTSTRAP,
                 seed: int = 0) -> pd.DataFrame:
    """Per pair of settings with few values each: the interaction's share, and the bootstrap interval of
    its share beyond the pair's shadow's (the second setting's values shuffled across the runs)."""
    names = [k for k, v in columns.items() if len(set(v)) <= MAX_LEVELS]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    shuffle, pick = random.Random(seed), np.random.default_rng(seed)
    rows = []
    for a, b in pairs:
        excess = []
        for _ in range(bootstrap):
            idx = pick.integers(0, len(scores), len(scores))
            xa, xb, y = [columns[a][i] for i in idx], [columns[b][i] for i in idx], [scores[i] for i in idx]
            excess.append(interaction_share(xa, xb, y) - interaction_share(xa, shuffle.sample(xb, len(xb)), y))
        low, high = np.quantile(excess, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
        share = interaction_share(columns[a], columns[b], scores)
        shadow = np.mean([interaction_share(columns[a], shuffle.sample(columns[b], len(columns[b])), scores)
                          for _ in range(bootstrap)])  # (its expectation: one shuffle's share is noisy)
        rows.append({"settings": f"{a} x {b}", "share": share, "excess": share - shadow,
                     "excess_low": float(low), "excess_high": float(high), "matters": bool(low > 0)})
    table = pd.DataFrame(rows, columns=["settings", "share", "excess", "excess_low", "excess_high", "matters"])
    return table.sort_values("share", ascending=False, ignore_index=True)


def verdict_flips(runs: list, comparisons: list, metric: str, columns: dict[str, list]) -> pd.DataFrame:
    """Per setting with few values (the seed aside): the verdict of the adapter chosen by development
    score among the runs with each value, and whether the verdicts differ (the setting flips it)."""
    verdicts = {c.run_id: c.verdict for c in comparisons if c.metric == metric}
    dev = [value(r, f"metrics.{DEV_PREFIX}{metric}") for r in runs]
    rows = []
    for key, values in columns.items():
        if key == "seed" or len(set(values)) > MAX_LEVELS:
            continue
        chosen = {}
        for level in sorted(set(values)):  # (a column is all numbers or all text: settings())
            best = max((i for i, v in enumerate(values) if v == level), key=lambda i: dev[i])
            chosen[level] = verdicts.get(runs[best]["run_id"], "-")
        if "-" in chosen.values():
            continue
        rows.append({"setting": key, "verdict of the best run at each value": "; ".join(
                     f"{level:g}: {v}" if isinstance(level, float) else f"{level}: {v}" for level, v in chosen.items()),
                     "flips the verdict": "YES" if len(set(chosen.values())) > 1 else "no"})
    return pd.DataFrame(rows)


def intervals(table: pd.DataFrame) -> list[str]:
    return [f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(table["excess_low"], table["excess_high"])]


def importance_view(done: pd.DataFrame, metric: str, comparisons: list = ()) -> tuple[list, dict[str, bytes]]:
    """The report's tables for one task metric: the adapters' settings against their development score
    (fANOVA and PED-ANOVA), their interactions, and which setting flips the verdict (`comparisons`: the
    headline verdicts, analysis/verdict.py); and a figure of the shares beyond the shadows."""
    runs = [r for _, r in done.iterrows() if is_adapter(r) and value(r, f"metrics.{DEV_PREFIX}{metric}") is not None]
    if len(runs) < MIN_RUNS:
        return [], {}
    columns = settings([r.to_dict() for r in runs])
    if not columns:
        return [], {}
    scores = [value(r, f"metrics.{DEV_PREFIX}{metric}") for r in runs]
    table = importances(columns, scores)
    ped = ped_anova(columns, scores)
    interval = f"beyond its shadow ({LEVEL:.0%} interval)"
    shown = pd.DataFrame({
        "setting": table["setting"], "share of the variance (fANOVA)": table["share"].map("{:.2f}".format),
        interval: intervals(table),
        "matters": table["matters"].map({True: "yes", False: "no evidence"}),
        f"PED-ANOVA (top {PED_QUANTILE:.0%})": [f"{ped.get(k, 0.0):.2f}" for k in table["setting"]]})
    note = (f"fANOVA (Optuna's evaluator) on the {len(runs)} adapters' development {metric}, with every setting's "
            "shadow (its values shuffled across the runs: no effect by construction); a setting matters when the "
            f"{LEVEL:.0%} bootstrap interval of its share beyond its shadow's lies above zero. A `seed` row is the "
            "seed's own effect: the noise any other setting must beat. PED-ANOVA: how much the best runs "
            "concentrate on some values of a setting (a point estimate).")
    tables = [(f"{metric}: which settings mattered (development scores)", shown, note)]
    pairs = interactions(columns, scores)
    shown_pairs = pairs.head(SHOWN_PAIRS)
    points = ["excess", "excess_low", "excess_high"]
    rows = [(name, *row) for name, row in zip(table["setting"], table[points].values)]
    rows += [(name, *row) for name, row in zip(shown_pairs["settings"], shown_pairs[points].values)]
    figure = plots.importance(rows, f"development {metric}", LEVEL)
    if not pairs.empty:
        tables.append((f"{metric}: interactions of two settings", pd.DataFrame({
            "settings": shown_pairs["settings"], "share of the variance": shown_pairs["share"].map("{:.2f}".format),
            interval: intervals(shown_pairs),
            "matters": shown_pairs["matters"].map({True: "yes", False: "no evidence"})}),
            "The share of the variance in what two settings do together beyond what each does alone (cell means of "
            "the grid less both settings' means), against the pair with the second setting shuffled."))
    flips = verdict_flips(runs, comparisons, metric, columns)
    if not flips.empty:
        tables.append((f"{metric}: which setting flips the verdict", flips,
                       "For each value of a setting, the adapter chosen by development score among the runs with that "
                       "value, and its verdict against the strongest baseline (the headline's, Holm-corrected)."))
    return tables, {f"{metric}: which settings mattered": figure}
