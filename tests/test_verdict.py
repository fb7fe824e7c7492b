"""The verdict's statistics against scipy on constructed cases: the interval, the Holm correction,
TOST, the sample-size statement, and the verdict each case gets."""

import math

import numpy as np
import pytest
from scipy import stats

from analysis import verdict


def paired(adapter: list[float], baseline: list[float]) -> tuple[dict, dict]:
    return dict(enumerate(adapter)), dict(enumerate(baseline))


def accuracies(n: int, a_only: int, b_only: int, both: int) -> tuple[dict, dict]:
    """0/1 scores of two runs on n examples: right together on `both`, alone on a_only / b_only."""
    a = [1] * both + [1] * a_only + [0] * b_only
    b = [1] * both + [0] * a_only + [1] * b_only
    return paired(a + [0] * (n - len(a)), b + [0] * (n - len(b)))


def test_holm_matches_the_step_down_procedure():
    # Holm (1979) on four p-values: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone
    assert verdict.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = list(rng.uniform(0, 0.2, size=rng.integers(1, 8)))
        adjusted = verdict.holm(p)
        # rejections at 5%: step down through the sorted p-values, p_(i) <= alpha / (m - i), stop at the first failure
        rejected, m = set(), len(p)
        for rank, i in enumerate(sorted(range(m), key=p.__getitem__)):
            if p[i] > 0.05 / (m - rank):
                break
            rejected.add(i)
        assert {i for i, a in enumerate(adjusted) if a <= 0.05} == rejected
        assert all(raw <= a <= min(1, raw * m) + 1e-12 for raw, a in zip(p, adjusted))


def test_one_sided_and_tost_p_values_are_scipys_t_tests():
    rng = np.random.default_rng(1)
    diffs = rng.normal(0.004, 0.3, size=300)
    for bound, alternative in ((-0.01, "greater"), (0.01, "less"), (0.0, "greater")):
        assert verdict.one_sided_p(diffs, bound, alternative) == pytest.approx(
            stats.ttest_1samp(diffs, bound, alternative=alternative).pvalue, rel=1e-9)
    assert verdict.tost_p(diffs, 0.01) == pytest.approx(max(
        stats.ttest_1samp(diffs, -0.01, alternative="greater").pvalue,
        stats.ttest_1samp(diffs, 0.01, alternative="less").pvalue), rel=1e-9)


def test_no_disagreement_on_a_few_examples_is_not_proof_of_equivalence():
    a, b = accuracies(8, 0, 0, 5)  # identical on 8 examples
    few = verdict.corrected([verdict.compare("r", "lora", "sst2/acc", "base", a, b, 0.01)])[0]
    assert few.sd == pytest.approx(math.sqrt(3 / 8)) and few.verdict == "inconclusive"
    a, b = accuracies(3000, 0, 0, 2000)  # identical on 3,000: the rule of three bounds disagreements below 0.1%
    many = verdict.corrected([verdict.compare("r", "lora", "sst2/acc", "base", a, b, 0.01)])[0]
    assert many.verdict == "equivalent"


def test_the_interval_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 200).astype(float), rng.integers(0, 2, 200).astype(float)
    c = verdict.compare("r", "lora", "sst2/acc", "base", *paired(list(a), list(b)), margin=0.01)
    order = sorted(range(200), key=str)  # (examples paired in the order of their ids)
    a, b = a[order], b[order]
    ci = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                         n_resamples=2000, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
    assert c.p == pytest.approx(stats.binomtest(int(np.sum(a > b)), int(np.sum(a != b)), 0.5).pvalue)


def test_the_sample_size_decides_with_the_stated_power():
    z, alpha = stats.norm, 0.05
    d, sd = 0.03, 0.35
    n = verdict.examples_needed(d, sd, margin=0.0, alpha=alpha)  # (margin 0: only "better" can be shown)
    power = lambda k: z.cdf(d * math.sqrt(k) / sd - z.ppf(1 - alpha / 2))  # noqa: E731
    assert power(n) >= 0.8 > power(n - 1)
    # At power 1/2 the stated n is where scipy's two-sided t-test on such differences reaches alpha.
    n_half = verdict.examples_needed(d, sd, margin=0.0, alpha=alpha, power=0.5)
    sample = np.resize([-1.0, 1.0], n_half)
    sample = d + sd * (sample - sample.mean()) / sample.std(ddof=1)  # mean d, sd exactly `sd`
    assert stats.ttest_1samp(sample, 0.0).pvalue == pytest.approx(alpha, abs=0.002)
    # Below the margin, "not better" is the nearer decision: a one-sided test against the margin.
    n_below = verdict.examples_needed(-0.01, sd, margin=0.01, alpha=alpha)
    assert z.cdf(0.02 * math.sqrt(n_below) / sd - z.ppf(1 - alpha)) >= 0.8
    assert verdict.examples_needed(0.05, sd, margin=0.01, alpha=alpha) == math.ceil(
        ((z.ppf(0.975) + z.ppf(0.8)) * sd / 0.05) ** 2)


def verdict_of(a, b, margin=0.01):
    return verdict.corrected([verdict.compare("r", "lora", "sst2/acc", "base", a, b, margin)])[0]


def test_each_constructed_case_gets_its_verdict():
    assert verdict_of(*accuracies(400, 90, 10, 250)).verdict == "better"
    assert verdict_of(*accuracies(400, 10, 90, 250)).verdict == "not better"
    assert verdict_of(*accuracies(4000, 20, 20, 3000)).verdict == "equivalent"
    small = verdict_of(*accuracies(100, 6, 3, 60))
    assert small.verdict == "inconclusive" and small.more_examples > 0
    assert small.more_examples == verdict.examples_needed(small.diff, small.sd, 0.01, verdict.ALPHA) - 100
    assert "about" in small.sentence() and "more test examples would decide it" in small.sentence()


def test_holm_over_the_adapters_of_a_sweep_withdraws_a_lucky_win():
    alone = verdict_of(*accuracies(300, 24, 10, 200))
    assert 0.01 < alone.p < 0.05 and alone.verdict == "better"
    family = verdict.corrected([verdict.compare(f"r{i}", f"lora{i}", "sst2/acc", "base",
                                                *accuracies(300, 24, 10, 200), 0.01) for i in range(5)])
    assert all(c.p_holm == pytest.approx(min(1, 5 * alone.p)) and c.verdict == "inconclusive" for c in family)
    assert family[0].family == 5 and "Holm, 5 compared" in family[0].sentence()


def test_the_sweeps_choice_reads_development_scores_and_breaks_ties_toward_the_smaller_adapter():
    """Test scores never choose; two adapters tied on development data go to the one with fewer
    trainable parameters (the simpler), whatever order the store lists them in."""
    import pandas as pd

    from analysis.summary import best_by_dev

    rows = [("lora-r16", 0.86, 0.99, 1_843_200), ("lora-r8", 0.86, 0.50, 921_600), ("lora-r2", 0.85, 0.99, 230_400),
            ("zero_shot", 0.95, 0.95, 0)]
    runs = pd.DataFrame([{"run_id": name, "status": "FINISHED", "tags.method": name.split("-")[0],
                          "metrics.dev/sst2/acc": dev, "metrics.sst2/acc": test, "metrics.trainable_params": params}
                         for name, dev, test, params in rows])
    for order in (runs, runs.iloc[::-1]):
        assert best_by_dev(order, "sst2/acc")["run_id"] == "lora-r8"
    # A trial that broke its study's constraint (hydra.sweeper.constraints) is passed over, by the
    # end-of-sweep table and the report alike.
    from analysis.report import best_run

    runs["tags.optuna.infeasible"] = [None, "trainable_params <= 500000 (off by 421600)", None, None]
    assert best_by_dev(runs, "sst2/acc")["run_id"] == "lora-r16"
    assert best_run(runs, "sst2/acc")[0]["run_id"] == "lora-r16"
