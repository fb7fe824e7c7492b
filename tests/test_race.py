"""The race of prompt variants on the development slice (Optuna's WilcoxonPruner) and the choice
that prefers the simpler variant unless a more complex one is better by more than its uncertainty."""

import numpy as np
import pytest

from sweep.scoring import race
from sweep.scoring.baselines import Variant

ZERO = Variant("plain", 0, "random", False)
ZERO_CAL = Variant("plain", 0, "random", True)
FEW = Variant("plain", 4, "random", False)
FEW_CAL = Variant("plain", 4, "random", True)


def raced(variant, *draws) -> race.Raced:
    r = race.Raced(variant)
    r.extend([list(d) for d in draws], [[0] * len(draws[0])] * len(draws), [0] * len(draws[0]))
    return r


def coin(p: float, n: int, seed: int) -> list[float]:
    return list((np.random.default_rng(seed).uniform(size=n) < p).astype(float))


def exact(ones: int, n: int = 200, offset: int = 0) -> list[float]:
    """n 0/1 scores with exactly `ones` ones, starting at example `offset` (wrapping around)."""
    return [1.0 if (i - offset) % n < ones else 0.0 for i in range(n)]


def test_a_more_complex_variant_wins_only_by_more_than_its_uncertainty():
    simple = raced(ZERO, exact(156))  # 0.78
    # 4-shot: +2 points on average, but its three draws disagree (0.86, 0.72, 0.82)
    noisy = raced(FEW, exact(172, offset=10), exact(144, offset=20), exact(164, offset=5))
    assert noisy.mean() - simple.mean() == pytest.approx(0.02)
    assert noisy.mean() - simple.mean() <= race.uncertainty(noisy, simple)
    assert race.choose([simple, noisy]).variant == ZERO
    # better by far more than the uncertainty: the complex one is chosen
    strong = raced(FEW_CAL, *[exact(176)] * 3)  # 0.88, the same 20 more examples right in every draw
    assert strong.mean() - simple.mean() > race.uncertainty(strong, simple)
    assert race.choose([simple, noisy, strong]).variant == FEW_CAL


def test_within_a_level_of_complexity_the_best_mean_wins_and_ties_go_to_the_first():
    a, b = raced(ZERO, coin(0.6, 100, 4)), raced(Variant("chat", 0, "random", False), coin(0.9, 100, 5))
    assert race.choose([a, b]).variant.template == "chat"
    same = coin(0.7, 100, 6)
    assert race.choose([raced(ZERO, same), raced(ZERO_CAL, same)]).variant == ZERO


def test_the_uncertainty_pairs_examples_and_adds_the_spread_of_draws():
    a = raced(ZERO, coin(0.7, 400, 7))
    b = raced(FEW, coin(0.75, 400, 8), coin(0.65, 400, 9))
    d = a.per_example() - b.per_example()
    expected = np.sqrt(np.var(d, ddof=1) / 400 + b.draw_sd() ** 2 / 2)
    assert race.uncertainty(a, b) == pytest.approx(expected)
    assert b.draw_sd() == pytest.approx(np.std([np.mean(x) for x in b.by_draw], ddof=1))


def test_the_race_drops_clearly_worse_variants_early_and_scores_the_rest_in_full():
    reference = coin(0.8, 800, 0)  # each example's score under the best variant (two tasks of 400)
    scores = {ZERO: [reference], ZERO_CAL: [reference],
              FEW: [coin(0.4, 800, s) for s in (1, 2, 3)],  # clearly worse
              FEW_CAL: [[x if i % 50 else 1 - x for i, x in enumerate(reference)]] * 3}  # as good, give or take
    scored = []

    def score_prefix(unit, start, stop):
        scored.append((unit[0].num_fewshot, start, stop))
        out = {}
        for v in unit:  # the two tasks' examples start..stop, one task after the other
            by_draw = [d[start:stop] + d[400 + start:400 + stop] for d in scores[v]]
            out[v] = (by_draw, [[1] * len(by_draw[0])] * len(by_draw))
        return out

    results = race.race([[ZERO, ZERO_CAL], [FEW, FEW_CAL]], score_prefix, dev_size=400, n_tasks=2,
                        p_threshold=0.05, n_startup_steps=50)
    by_variant = {r.variant: r for r in results}
    assert by_variant[FEW].pruned_at == 50 and not by_variant[FEW].complete  # clearly worse: dropped at once
    assert by_variant[ZERO].complete and by_variant[ZERO].n == 2 * 400
    assert by_variant[FEW_CAL].complete  # close to the best: raced to the end
    assert race.prefixes(400, 50) == [50, 100, 200, 400]
    assert [s for s in scored if s[0] == 4] == [(4, 0, 50), (4, 50, 100), (4, 100, 200), (4, 200, 400)]
    two = by_variant[ZERO]
    assert two.task(0).n == two.task(1).n == 400  # each task's examples kept apart


def test_a_unit_whose_variants_are_all_dropped_stops_scoring():
    calls = []

    def score_prefix(unit, start, stop):
        calls.append(unit[0].num_fewshot)
        p = 0.9 if unit[0].num_fewshot == 0 else 0.2
        return {v: ([coin(p, 400, 11)[start:stop]], [[0] * (stop - start)]) for v in unit}

    results = race.race([[ZERO], [FEW]], score_prefix, dev_size=400, n_tasks=1, p_threshold=0.05, n_startup_steps=50)
    assert calls.count(4) == 1 and results[1].pruned_at == 50
