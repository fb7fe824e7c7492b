"""Importance with uncertainty on constructed sweeps (analysis/importance.py)."""

import random
from types import SimpleNamespace

from analysis.importance import importances, interaction_share, interactions, ped_anova, settings, verdict_flips


def test_a_planted_effect_ranks_first_and_matters_and_a_pure_noise_setting_does_not():
    """A 3 x 3 grid, four seeds each (a sweep's design: the settings are not confounded)."""
    draw = random.Random(0)
    runs = [{"train.lr": lr, "lora.dropout": dropout} for lr in (1e-4, 1e-3, 1e-2) for dropout in (0.0, 0.05, 0.1)
            for _ in range(4)]
    scores = [0.6 + (0.2 if r["train.lr"] == 1e-3 else 0.0) + draw.gauss(0, 0.02) for r in runs]
    columns = {k: [r[k] for r in runs] for k in ("train.lr", "lora.dropout")}
    table = importances(columns, scores, bootstrap=30).set_index("setting")
    assert table.index[0] == "train.lr" and table.loc["train.lr", "excess_low"] > 0
    assert table.loc["lora.dropout", "excess_low"] <= 0 <= table.loc["lora.dropout", "excess_high"]
    assert table.loc["train.lr", "matters"] and not table.loc["lora.dropout", "matters"]
    assert table.loc["train.lr", "excess"] > 0.5 > table.loc["lora.dropout", "excess"]  # (the figure's points)


def test_only_swept_settings_that_vary_are_read_numbers_as_numbers():
    runs = [{"params.lora.r": "8", "params.lora.target_modules": "qv", "params.seed": "0", "params.tracking.uri": "a"},
            {"params.lora.r": "16", "params.lora.target_modules": "qkvo", "params.seed": "0", "params.tracking.uri": "b"}]
    assert settings(runs) == {"lora.r": [8.0, 16.0], "lora.target_modules": ["qv", "qkvo"]}


def test_a_planted_interaction_matters_where_neither_setting_alone_does_and_a_noise_pair_does_not():
    """Rank and learning rate matter only together (a high rate pays at a low rank and hurts at a high
    one: no main effect of either); dropout does nothing."""
    draw = random.Random(1)
    runs = [{"lora.r": r, "train.lr": lr, "lora.dropout": d} for r in (4, 16) for lr in (1e-4, 1e-3)
            for d in (0.0, 0.1) for _ in range(3)]
    scores = [0.7 + (0.1 if (x["lora.r"] == 4) == (x["train.lr"] == 1e-3) else -0.1) + draw.gauss(0, 0.01)
              for x in runs]
    columns = {k: [x[k] for x in runs] for k in ("lora.r", "train.lr", "lora.dropout")}
    assert interaction_share(columns["lora.r"], columns["train.lr"], scores) > 0.9
    pairs = interactions(columns, scores, bootstrap=30).set_index("settings")
    assert pairs.index[0] == "lora.r x train.lr" and pairs.loc["lora.r x train.lr", "matters"]
    noise = pairs.loc["lora.r x lora.dropout"]
    assert noise["excess_low"] <= 0 <= noise["excess_high"] and not noise["matters"]


def test_ped_anova_puts_the_setting_the_best_runs_share_first():
    draw = random.Random(2)
    runs = [{"train.lr": lr, "lora.dropout": d} for lr in (1e-4, 1e-3, 1e-2) for d in (0.0, 0.05, 0.1) for _ in range(3)]
    scores = [0.6 + (0.2 if x["train.lr"] == 1e-3 else 0.0) + draw.gauss(0, 0.02) for x in runs]
    ped = ped_anova({k: [x[k] for x in runs] for k in ("train.lr", "lora.dropout")}, scores)
    assert max(ped, key=ped.get) == "train.lr" and ped["train.lr"] > 2 * ped["lora.dropout"]


def test_a_setting_whose_best_run_changes_the_verdict_is_said_to_flip_it():
    """Rank 16's best run is better than the baseline, rank 4's is not; dropout's best runs agree."""
    runs = [{"run_id": f"r{r}-d{d}", "metrics.dev/sst2/acc": dev} for r, d, dev in
            ((4, 0.0, 0.70), (4, 0.1, 0.72), (16, 0.0, 0.80), (16, 0.1, 0.78))]
    verdicts = {"r4-d0.0": "not better", "r4-d0.1": "not better", "r16-d0.0": "better", "r16-d0.1": "better"}
    comparisons = [SimpleNamespace(run_id=k, metric="sst2/acc", verdict=v) for k, v in verdicts.items()]
    columns = {"lora.r": [4.0, 4.0, 16.0, 16.0], "lora.dropout": [0.0, 0.1, 0.0, 0.1], "seed": [0.0, 1.0, 0.0, 1.0]}
    flips = verdict_flips(runs, comparisons, "sst2/acc", columns).set_index("setting")
    assert flips.loc["lora.r", "flips the verdict"] == "YES"
    assert flips.loc["lora.r", "verdict of the best run at each value"] == "4: not better; 16: better"
    assert flips.loc["lora.dropout", "flips the verdict"] == "no" and "seed" not in flips.index
