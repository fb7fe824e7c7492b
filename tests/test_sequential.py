"""The sequential verdict holds its error rate under optional stopping, where looking at a
fixed-size interval after every block does not, and decides a large difference with fewer test
examples than the fixed-size test reads (simulated paired 0/1 scores, as accuracy gives)."""

import numpy as np
from scipy import stats as sps

from analysis.sequential import bounds, order, read_until_decided, sequential
from analysis.verdict import bootstrap

ALPHA, MARGIN, BLOCK = 0.05, 0.01, 25  # 500 examples: 20 looks


def paired(rng, n: int, adapter: float, baseline: float, agree: float = 0.6) -> np.ndarray:
    """adapter - baseline per example, each arm right at its own rate; with probability `agree` the
    two find an example equally hard (correlated arms, as two models on one test set are)."""
    hardness = rng.random(n)
    other = np.where(rng.random(n) < agree, hardness, rng.random(n))
    return (hardness < adapter).astype(float) - (other < baseline).astype(float)


def peeking_says_better(diffs: np.ndarray) -> bool:
    """What looking at the fixed-size 95% interval after every block would conclude: 'better' as
    soon as one look's interval lies above 0."""
    z = sps.norm.ppf(1 - ALPHA / 2)
    for end in range(BLOCK, len(diffs) + 1, BLOCK):
        d = diffs[:end]
        if d.mean() - z * d.std(ddof=1) / np.sqrt(end) > 0:
            return True
    return False


def test_with_no_difference_stopping_when_it_decides_rarely_says_better_and_peeking_often_does():
    rng = np.random.default_rng(0)
    runs = [paired(rng, 500, 0.8, 0.8) for _ in range(300)]
    said_better = np.mean([sequential(d, ALPHA, MARGIN, BLOCK).verdict == "better" for d in runs])
    peeked = np.mean([peeking_says_better(d) for d in runs])
    assert said_better <= ALPHA  # (the sequence holds at every block at once: usually far below)
    assert peeked > ALPHA  # 20 looks at a one-sided 2.5% test: the fault the sequence avoids


def test_the_sequence_covers_the_true_difference_at_every_block_at_the_stated_level():
    rng = np.random.default_rng(1)
    missed = 0
    for _ in range(200):
        d = paired(rng, 500, 0.7, 0.65)
        low, high = bounds(d, ALPHA)
        missed += bool(np.any((low > 0.05) | (high < 0.05)))  # (0.05 is the true difference)
    assert missed / 200 <= ALPHA


def test_a_large_difference_is_decided_as_the_fixed_size_test_decides_it_with_fewer_examples():
    rng = np.random.default_rng(2)
    used, agreed = [], 0
    for _ in range(50):
        d = paired(rng, 872, 0.88, 0.74)
        s = sequential(d, ALPHA, MARGIN, 50)
        draws = bootstrap(d, np.zeros_like(d), 2000)
        fixed = "better" if np.quantile(draws, ALPHA / 2) > 0 else "not better"
        agreed += (s.verdict == "better") == (fixed == "better")
        used.append(s.used)
    assert agreed >= 49
    assert np.median(used) <= 872 / 2  # (the fixed-size test read all 872)


def test_a_run_out_test_set_says_inconclusive_with_the_last_sequence_and_equivalence_needs_a_tight_one():
    rng = np.random.default_rng(3)
    small = sequential(paired(rng, 60, 0.8, 0.8), ALPHA, MARGIN, 20)
    assert small.verdict == "inconclusive" and small.used == small.available == 60
    assert small.low < 0 < small.high and "after 60 of 60 test examples" in small.sentence()
    identical = sequential(np.zeros(4000), ALPHA, 0.05, 100)  # two arms that always agree
    assert identical.verdict == "equivalent" and identical.used < 4000 and -0.05 < identical.low <= 0 <= identical.high


def test_the_reading_order_is_the_seeds_alone():
    assert np.array_equal(order(872, 7), order(872, 7)) and not np.array_equal(order(872, 7), order(872, 8))
    assert sorted(order(872, 7)) == list(range(872))


def test_a_sweep_configured_sequential_decides_its_primary_claim_in_blocks_and_says_how_many_it_read(monkeypatch):
    import pandas as pd

    from analysis import summary, verdict

    rng = np.random.default_rng(4)
    base = (rng.random(400) < 0.6).astype(float)
    scores = {"base": base, "lora-r8": np.maximum(base, rng.random(400) < 0.5), "lora-r2": base}
    monkeypatch.setattr(summary, "samples", lambda run_id, task, name: dict(enumerate(scores[run_id])))
    monkeypatch.setattr(summary, "examples_available", lambda run_id, task: 400)
    runs = pd.DataFrame([{"run_id": n, "status": "FINISHED", "tags.method": m, "tags.mlflow.runName": n,
                          "tags.tasks": "sst2", "tags.model": "m", "params.eval.limit": "400", "params.seed": "0",
                          "params.eval.sequential": "True", "params.eval.sequential_block": "50",
                          "metrics.dev/sst2/acc": dev, "metrics.sst2/acc": float(np.mean(scores[n])),
                          "metrics.trainable_params": 1.0}
                         for n, m, dev in [("base", "strongest_baseline", 0.6), ("lora-r8", "lora", 0.8),
                                           ("lora-r2", "lora", 0.7)]])
    found = {c.run_id: c for c in summary.sweep_verdicts(runs)}
    primary, secondary = found["lora-r8"], found["lora-r2"]
    assert primary.role == verdict.PRIMARY and primary.verdict == "better" == replace_stopped(primary).verdict
    assert primary.stopped.used < 400 and secondary.stopped is None  # (only the stated claim reads in blocks)
    line = "\n".join(summary.verdict_lines(runs, list(found.values())))
    assert f"sequential: better after {primary.stopped.used} of 400 test examples (blocks of 50" in line
    assert "the fixed-size test over all 400 scored: better" in line
    assert verdict.metrics_of(primary)["verdict/sst2/acc/sequential_examples"] == primary.stopped.used
    runs["params.eval.sequential"] = "False"
    assert all(c.stopped is None for c in summary.sweep_verdicts(runs))


def replace_stopped(c):
    from dataclasses import replace

    return replace(c, stopped=None)


def sweep_of(scores: dict, limit: int = 400):
    """A sweep's runs as the summary reads them: a strongest baseline and one adapter, configured
    sequential, with `scores` {run id: {doc_id: score}} their recorded test examples."""
    import pandas as pd

    return pd.DataFrame([{"run_id": n, "status": "FINISHED", "tags.method": m, "tags.mlflow.runName": n,
                          "tags.tasks": "sst2", "tags.model": "m", "params.eval.limit": str(limit), "params.seed": "3",
                          "params.eval.sequential": "True", "params.eval.sequential_block": "40",
                          "metrics.dev/sst2/acc": dev, "metrics.sst2/acc": float(np.mean(list(scores[n].values()))),
                          "metrics.trainable_params": 1.0}
                         for n, m, dev in [("base", "strongest_baseline", 0.6), ("lora", "lora", 0.8)]])


def test_a_deferred_test_pass_is_scored_only_until_it_decides_and_the_summary_reads_the_same_stop(monkeypatch):
    """settle.py's loop: each block is scored only when the reading reaches it (the examples after the
    stop are never scored, none twice), and the summary, reading what was recorded, stops at the same
    block with the same sequence and says how many of the 400 it read."""
    from analysis import summary

    rng = np.random.default_rng(5)
    base = (rng.random(400) < 0.6).astype(float)
    adapter = np.maximum(base, rng.random(400) < 0.6)
    asked = []

    def score_block(ids):
        asked.extend(ids)
        return adapter[ids] - base[ids]

    stopped = read_until_decided(score_block, 400, seed=3, alpha=0.05, margin=0.01, block=40)
    assert stopped.verdict == "better" and stopped.used < 400 and stopped.available == 400
    assert asked == list(order(400, 3)[:stopped.used])  # (in the seed's order, each once, none after the stop)
    recorded = {"base": {i: base[i] for i in asked}, "lora": {i: adapter[i] for i in asked}}
    monkeypatch.setattr(summary, "samples", lambda run_id, task, name: recorded[run_id])
    monkeypatch.setattr(summary, "examples_available", lambda run_id, task: 872)  # (the task's; eval.limit reads 400)
    [read] = summary.sweep_verdicts(sweep_of(recorded))
    assert read.n == stopped.used and (read.stopped.used, read.stopped.available) == (stopped.used, 400)
    assert (read.stopped.verdict, read.stopped.low, read.stopped.high) == (stopped.verdict, stopped.low, stopped.high)
    assert f"sequential: better after {stopped.used} of 400 test examples" in read.sentence()


def test_a_deferred_test_pass_that_never_decides_scores_every_example_once():
    asked = []

    def score_block(ids):
        asked.extend(ids)
        return np.zeros(len(ids))  # (no difference: the sequence never fits inside a margin this narrow)

    stopped = read_until_decided(score_block, 130, seed=0, alpha=0.05, margin=0.001, block=50)
    assert (stopped.verdict, stopped.used) == ("inconclusive", 130) and sorted(asked) == list(range(130))
