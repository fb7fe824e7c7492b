"""Importance with uncertainty on constructed sweeps (analysis/importance.py)."""

import random

from analysis.importance import importances, settings


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


def test_only_swept_settings_that_vary_are_read_numbers_as_numbers():
    runs = [{"params.lora.r": "8", "params.lora.target_modules": "qv", "params.seed": "0", "params.tracking.uri": "a"},
            {"params.lora.r": "16", "params.lora.target_modules": "qkvo", "params.seed": "0", "params.tracking.uri": "b"}]
    assert settings(runs) == {"lora.r": [8.0, 16.0], "lora.target_modules": ["qv", "qkvo"]}
