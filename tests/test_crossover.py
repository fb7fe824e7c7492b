"""n*, where the adapter's test score overtakes the strongest baseline's (analysis/crossover.py), on
constructed learning curves."""

import math

import numpy as np
import pytest

from analysis.crossover import crossing, describe, estimate

EXAMPLES = 400


def run(accuracy: float, rng=None) -> dict[int, float]:
    """Per-example 0/1 scores with exactly this accuracy (shuffled with `rng`)."""
    right = round(accuracy * EXAMPLES)
    scores = np.array([1.0] * right + [0.0] * (EXAMPLES - right))
    if rng is not None:
        rng.shuffle(scores)
    return dict(enumerate(scores.tolist()))


def test_a_known_crossover_is_found_between_the_sizes_tried_in_log_size():
    # The adapter gains 0.1 per doubling from 0.5 at 16 examples; the baseline holds 0.7: they meet at 64.
    sizes, seeds = (16, 32, 128, 512), (0, 1, 2)
    adapter = {(n, s): run(min(0.5 + 0.1 * math.log2(n / 16), 1.0)) for n in sizes for s in seeds}
    baseline = {(n, s): run(0.7) for n in sizes for s in seeds}
    c = estimate(adapter, baseline, resamples=200)
    assert c.n_star == pytest.approx(64)  # between 32 (-0.1) and 128 (+0.1), halfway in log size
    assert c.sizes == list(sizes) and c.seeds == 3 and c.examples == EXAMPLES
    assert c.interval[0] <= 64 <= c.interval[1] and c.interval[0] > 32 and c.interval[1] < 128
    assert np.allclose(c.baseline[0], 0.7) and c.adapter[1, 0] <= 0.5 <= c.adapter[2, 0]
    assert describe(c).startswith("n* = 64 labelled examples (95% interval over 200 resamples of 3 seeds")


def test_noisy_seeds_widen_the_interval_and_it_still_holds_the_planted_crossing():
    rng = np.random.default_rng(0)
    sizes, seeds = (16, 64, 256, 1024), range(4)
    truth = {n: 0.55 + 0.1 * math.log2(n / 16) / 2 for n in sizes}  # 0.55, 0.65, 0.75, 0.85: meets 0.7 at 128
    adapter = {(n, s): run(truth[n] + rng.normal(0, 0.02), rng) for n in sizes for s in seeds}
    baseline = {(n, s): run(0.7 + rng.normal(0, 0.02), rng) for n in sizes for s in seeds}
    c = estimate(adapter, baseline, resamples=300)
    assert 64 < c.n_star < 256 and c.interval[0] < 128 < c.interval[1]
    assert c.interval[1] - c.interval[0] > 10


def test_never_overtaking_and_ahead_from_the_start_are_said_as_such():
    assert crossing([16, 64], np.array([-0.1, -0.05])) == math.inf
    assert crossing([16, 64], np.array([0.1, 0.2])) == 16
    assert crossing([16, 64, 256], np.array([0.1, -0.1, 0.1])) == pytest.approx(128)  # (the last time it falls behind counts)
    adapter = {(n, 0): run(0.6) for n in (16, 64)}
    c = estimate(adapter, {(None, 0): run(0.8)}, resamples=50)  # (a whole-split baseline: the same at every size)
    assert math.isinf(c.n_star) and math.isinf(c.interval[1])
    assert "does not overtake the baseline up to 64" in describe(c) and "beyond 64 (the largest size tried)" in describe(c)


def test_one_size_or_no_shared_examples_gives_no_estimate():
    assert estimate({(16, 0): run(0.6)}, {(16, 0): run(0.7)}) is None
    assert estimate({(16, 0): {0: 1.0}, (64, 0): {0: 1.0}}, {(None, 0): {1: 1.0}}) is None


@pytest.mark.e2e
def test_the_crossover_experiment_gives_n_star_and_the_costs_in_the_report(tmp_path):
    """`experiment=crossover` on the tiny model (two sizes, two seeds, both arms), then the report: the
    crossover table with n*, the cost table, and each run's costs; the baselines' demonstrations are
    the examples their size and seed's adapter trained on."""
    import json

    import mlflow

    from analysis import report
    from sweep.data import splits
    from sweep.pipeline.build import load_project_tasks
    from tests.conftest import compose, run_sweep, runs_of

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = [f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/artifacts", "tracking.sweep_id=c1"]
    grid = ["-m", "experiment=crossover", "hydra/launcher=basic", "model=tiny", "data.max_train_samples=8,32", "seed=0,1",
            "eval.limit=16", "eval.batch_size=16", "data.dev_size=8", "train.batch_size=4", "train.num_train_epochs=1",
            *tracking]
    p = run_sweep(*grid, "method=lora")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    p = run_sweep(*grid, "method=strongest_baseline", "method.search.template=[default]", "method.search.num_fewshot=[2]",
                  "method.search.fewshot_sampler=[random]", "method.search.calibrate=[false]", "method.search.oracle=none",
                  "eval.fewshot_draws=1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    runs = runs_of(tracking, "crossover")
    assert len(runs) == 8 and (runs["status"] == "FINISHED").all() and runs["tags.machine"].str.contains("torch").all()
    assert set(runs["tags.mlflow.runName"].str.extract(r"-(n\d+-s\d)$")[0]) == {"n8-s0", "n8-s1", "n32-s0", "n32-s1"}
    lora = runs[runs["tags.method"] == "lora"]
    # 1 pass over 8 or 32 examples at 4 a step (train.num_train_epochs=1 below max_steps): 2 or 8 steps of 4 tokens' worth
    assert sorted(lora["metrics.train_examples"]) == [8, 8, 32, 32] and (lora["metrics.train_flops"] > 0).all()
    assert (runs["metrics.query_prompt_tokens"] > 0).all() and (runs["metrics.query_seconds_per_1k"] > 0).all()
    baselines = runs[runs["tags.method"] == "strongest_baseline"]
    two_shot, zero = baselines["metrics.query_prompt_tokens"].mean(), lora["metrics.query_prompt_tokens"].mean()
    assert two_shot > 2 * zero  # (two demonstrations and the question, against the question alone)
    task = load_project_tasks(compose("model=tiny"))[1]["sst2"]
    train, dev = task.dataset["train"], set(splits.dev_indices(task, 8))
    for _, b in baselines.iterrows():
        size, seed = int(b["params.data.max_train_samples"]), int(b["params.seed"])
        labelled = {train[i]["idx"] for i in splits.training_order(len(train), size, seed, dev)}
        [draw] = json.loads(mlflow.artifacts.load_text(f"runs:/{b['run_id']}/baseline_panel.json"))["demonstrations"]
        assert len(draw["sst2"]) == 2 and {d["idx"] for d in draw["sst2"]} <= labelled
    out = tmp_path / "report"
    assert report.main(["--experiment", "crossover", "--tracking-uri", uri, "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "where fine-tuning overtakes prompting (n\\*)" in text and "labelled examples (95% interval over" in text
    assert "cost and break-even" in text and "repaid after (FLOPs)" in text
    assert "crossover of adapter and baseline" in text and "score against cost" in text
