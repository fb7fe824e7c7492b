"""The verdict (analysis/verdict.py): one procedure whose interval decides, checked by simulation
at small sizes (the type-I error of "better", the interval's coverage, the decision equal to where
the interval lies), on constructed cases, and the primary/secondary families a sweep forms."""

import numpy as np
import pandas as pd
import pytest

from analysis import verdict


def paired(adapter: list[float], baseline: list[float]) -> tuple[dict, dict]:
    return dict(enumerate(adapter)), dict(enumerate(baseline))


def simulated(rng, n: int, diff: float, discordance: float = 0.175, base: float = 0.8) -> tuple[dict, dict]:
    """0/1 scores of an adapter and a baseline on n examples: they disagree on a share `discordance`,
    the adapter right on (discordance + diff) / 2 of all examples where they disagree."""
    b = (rng.random(n) < base).astype(float)
    disagree = rng.random(n) < discordance
    adapter_right = rng.random(n) < (discordance + diff) / (2 * discordance)
    a = np.where(disagree, adapter_right.astype(float), b)
    b = np.where(disagree, 1 - a, b)
    return paired(list(a), list(b))


def verdicts(n: int, diff: float, runs: int, seed: int = 0, resamples: int = 400) -> list[verdict.Comparison]:
    rng = np.random.default_rng(seed)
    return [verdict.compare("r", "lora", "sst2/acc", "base", *simulated(rng, n, diff), margin=0.01,
                            resamples=resamples) for _ in range(runs)]


def test_better_is_said_exactly_when_the_interval_lies_above_zero_and_worse_below():
    for c in verdicts(200, 0.05, 40) + verdicts(200, -0.05, 40, seed=1) + verdicts(200, 0.0, 40, seed=2):
        low, high = c.interval
        assert (c.verdict == "better") == (low > 0) and (c.verdict == "worse") == (high < 0)
        assert (c.verdict == "equivalent") == (not low > 0 and not high < 0 and -0.01 < low and high < 0.01)


def test_better_at_a_true_difference_of_zero_stays_within_the_nominal_level():
    """300 simulated sweeps of 200 examples at no true difference: "better" one-sided at alpha/2."""
    said = [c.verdict == "better" for c in verdicts(200, 0.0, 300, seed=3)]
    assert np.mean(said) <= verdict.ALPHA / 2 + 2.5 * np.sqrt(verdict.ALPHA / 2 / 300)  # (2.5 binomial sd of slack)


def test_the_interval_covers_the_true_difference_at_its_nominal_rate_and_says_so_when_it_cannot():
    covered = [c.interval[0] <= 0.06 <= c.interval[1] for c in verdicts(300, 0.06, 300, seed=4)]
    assert abs(np.mean(covered) - 0.95) < 2.5 * np.sqrt(0.95 * 0.05 / 300)
    small = verdicts(25, 0.06, 1, seed=5)[0]
    assert small.n < verdict.SMALL_SAMPLE and "covers less than its nominal 95%" in small.sentence()
    assert "covers less" not in verdicts(300, 0.06, 1, seed=5)[0].sentence()


def test_a_family_widens_the_interval_and_the_decision_moves_with_it():
    """Bonferroni within a role: three tasks' primary claims each at 1 - 0.05/3."""
    a, b = paired([1.0] * 40 + [0.0] * 160 + [1.0] * 20, [0.0] * 40 + [0.0] * 160 + [1.0] * 20)
    b.update({i: 1.0 for i in range(40, 60)})  # 40 vs 20 disagreements of 220: +0.091
    alone = verdict.corrected([verdict.compare("r", "lora", "sst2/acc", "base", a, b, 0.01)])[0]
    three = verdict.corrected([alone] * 3)[0]
    assert alone.level == 0.95 and three.level == pytest.approx(1 - 0.05 / 3)
    assert three.interval[0] < alone.interval[0] and three.interval[1] > alone.interval[1]
    assert "97.5% paired bootstrap" in verdict.corrected([alone] * 2)[0].sentence()


def test_the_detectable_effect_and_the_examples_equivalence_needs_follow_the_standard_error():
    c = verdicts(400, 0.0, 1, seed=6, resamples=2000)[0]
    z = 1.959964 + 0.841621
    assert c.detectable == pytest.approx(z * c.se, rel=1e-4)
    assert c.equivalence_needs == pytest.approx(400 * (z * c.se / 0.01) ** 2, abs=1)
    assert f"equivalence within ±0.01 would need about {c.equivalence_needs:,} test examples" in c.sentence()
    assert "more test examples would decide it" not in c.sentence()  # (the post-hoc line is gone)


def test_seeds_widen_the_interval_when_they_disagree_and_the_claim_says_whose_it_is():
    rng = np.random.default_rng(7)
    a, b = simulated(rng, 300, 0.06)
    one = verdict.compare("r", "lora", "sst2/acc", "base", a, b, 0.01)
    flipped = {i: (1 - v if i % 7 == 0 else v) for i, v in a.items()}  # another seed disagrees on 1 in 7
    three = verdict.compare("r", "lora", "sst2/acc", "base", [a, flipped, a], b, 0.01)
    assert three.seeds == 3 and len(three.seed_means) == 3 and one.seeds == 1
    assert three.se > one.se
    assert "about this adapter (one training seed)" in one.claim()
    assert "about the configuration (3 training seeds)" in three.claim()
    assert "x 3 seeds" in three.sentence()


def test_a_sweep_has_one_primary_claim_per_task_and_the_other_adapters_are_secondary(monkeypatch):
    from analysis import summary

    scores = {"base": [1.0] * 50 + [0.0] * 150, "lora-r8": [1.0] * 80 + [0.0] * 120,
              "lora-r2": [1.0] * 60 + [0.0] * 140, "lora-r8-seed1": [1.0] * 78 + [0.0] * 122}
    monkeypatch.setattr(summary, "samples", lambda run_id, task, name: dict(enumerate(scores[run_id])))
    monkeypatch.setattr(summary, "examples_available", lambda run_id, task: 1000)
    rows = [("base", "strongest_baseline", 0.70, None), ("lora-r8", "lora", 0.80, None),
            ("lora-r2", "lora", 0.75, None), ("lora-r8-seed1", "lora", 0.90, "lora-r8")]
    runs = pd.DataFrame([{"run_id": n, "status": "FINISHED", "tags.method": m, "tags.mlflow.runName": n,
                          "tags.tasks": "sst2", "tags.model": "m", "params.eval.limit": "200", "tags.confirms": c,
                          "metrics.dev/sst2/acc": dev, "metrics.sst2/acc": float(np.mean(scores[n])),
                          "metrics.trainable_params": 1.0} for n, m, dev, c in rows])
    found = summary.sweep_verdicts(runs)
    primary = [c for c in found if c.role == verdict.PRIMARY]
    assert [(c.run_id, c.seeds, c.family) for c in primary] == [("lora-r8", 2, 1)]
    assert [(c.run_id, c.role, c.family) for c in found if c not in primary] == [("lora-r2", "secondary", 1)]
    lines = summary.verdict_lines(runs, found)
    assert lines[0].startswith("Primary claim on sst2/acc: the adapter chosen on development data (lora-r8")
    assert "± 0.007 (mean ± sd over 2 training seeds); a claim about the configuration" in lines[2]
    assert "Secondary" in lines[3]
    table = summary.comparison_table(runs, found)
    assert list(table["run"])[:2] == ["lora-r8", "lora-r8-seed1"]  # (chosen first, then by development score)


def test_the_sweeps_choice_reads_development_scores_and_breaks_ties_toward_the_smaller_adapter():
    """Test scores never choose; two adapters tied on development data go to the one with fewer
    trainable parameters (the simpler), whatever order the store lists them in."""
    import pandas as pd

    from analysis.runs import best_by_dev

    rows = [("lora-r16", 0.86, 0.99, 1_843_200), ("lora-r8", 0.86, 0.50, 921_600), ("lora-r2", 0.85, 0.99, 230_400),
            ("zero_shot", 0.95, 0.95, 0)]
    runs = pd.DataFrame([{"run_id": name, "status": "FINISHED", "tags.method": name.split("-")[0],
                          "metrics.dev/sst2/acc": dev, "metrics.sst2/acc": test, "metrics.trainable_params": params}
                         for name, dev, test, params in rows])
    for order in (runs, runs.iloc[::-1]):
        assert best_by_dev(order, "sst2/acc")["run_id"] == "lora-r8"
    # A trial that broke its study's constraint (hydra.sweeper.constraints) is passed over; a seed
    # retraining the chosen configuration (confirm.py) is never a candidate of its own.
    runs["tags.optuna.infeasible"] = [None, "trainable_params <= 500000 (off by 421600)", None, None]
    assert best_by_dev(runs, "sst2/acc")["run_id"] == "lora-r16"
    runs["tags.confirms"] = ["lora-r2", None, None, None]
    assert best_by_dev(runs, "sst2/acc")["run_id"] == "lora-r2"
