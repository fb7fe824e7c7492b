"""hydra.sweeper.enqueue, constraints and stop_after on constructed studies (no model)."""

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from sweep.config import ConfigError
from sweep.study import controls

SPACE = {"lora.r": CategoricalDistribution([2, 8]), "train.lr": FloatDistribution(1e-4, 1e-2, log=True)}


def study_of(values: list[float], direction="maximize", constraints: list[float] | None = None) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for i, v in enumerate(values):
        attrs = {"constraints:budget": constraints[i]} if constraints else {}
        study.add_trial(create_trial(value=v, params={"lora.r": 2 if i % 2 else 8, "train.lr": 1e-3},
                                     distributions=SPACE, system_attrs=attrs))
    return study


def test_constraints_parse_and_measure_how_far_a_metric_is_outside():
    le, ge = controls.parse_constraints(["trainable_params <= 1e6", "dev/sst2/acc>=0.6"])
    assert (le.metric, le.op, le.bound, ge.metric) == ("trainable_params", "<=", 1e6, "dev/sst2/acc")
    assert le.violation(1.5e6) == 5e5 and le.violation(1e6) == 0 and ge.violation(0.7) == pytest.approx(-0.1)
    assert controls.violations([le, ge], {"trainable_params": 2e6, "dev/sst2/acc": 0.5}, 3) == {
        "trainable_params <= 1e+06": 1e6, "dev/sst2/acc >= 0.6": pytest.approx(0.1)}
    for bad in (["trainable_params < 5"], ["__import__('os') <= 1"], ["peak_rss_mb <= lots"], "x <= 1"):
        with pytest.raises(ConfigError, match="hydra.sweeper.constraints"):
            controls.parse_constraints(bad)
    with pytest.raises(ConfigError, match="trial 3's run has no metric 'peak_gpu_mb'; it has trainable_params"):
        controls.violations(controls.parse_constraints(["peak_gpu_mb <= 1"]), {"trainable_params": 1.0}, 3)


def test_enqueued_configurations_must_lie_in_the_search_space():
    assert controls.enqueued([{"lora.r": 8, "train.lr": 3e-4}], SPACE, None) == [{"lora.r": 8, "train.lr": 3e-4}]
    for item, needle in (({"lora.alpha": 16}, "sets lora.alpha, which the search space does not sweep"),
                         ({"lora.r": 4}, "sets lora.r=4, outside its search space"),
                         ({"train.lr": 1.0}, "sets train.lr=1.0, outside"), (8, "give a mapping")):
        with pytest.raises(ConfigError, match=needle):
            controls.enqueued([item], SPACE, None)


def test_the_best_of_an_earlier_study_are_enqueued_best_first_and_infeasible_ones_never():
    earlier = study_of([0.5, 0.9, 0.7, 0.95], constraints=[0, 0, 0, 1])  # (the 0.95 broke its budget)
    picked = controls.enqueued([{"study": "earlier", "best": 2}], SPACE, {"earlier": earlier}.__getitem__)
    assert picked == [earlier.trials[1].params, earlier.trials[2].params]
    with pytest.raises(ConfigError, match="best=0 is invalid"):
        controls.enqueued([{"study": "earlier", "best": 0}], SPACE, {"earlier": earlier}.__getitem__)


@pytest.mark.parametrize("values,direction,patience,stops", [
    ([0.5, 0.6, 0.6, 0.6], "maximize", 2, True),   # two completed trials without a better value
    ([0.5, 0.6, 0.6, 0.7], "maximize", 2, False),  # the last one improved
    ([0.5, 0.6, 0.6], "maximize", 3, False),
    ([3.0, 2.0, 2.5, 2.1], "minimize", 2, True),
    ([], "maximize", 1, False),
])
def test_a_plateau_of_patience_trials_stops_the_study(values, direction, patience, stops):
    assert controls.plateaued(study_of(values, direction), patience) is stops


def test_an_infeasible_trial_neither_counts_as_best_nor_as_an_improvement():
    study = study_of([0.5, 0.9, 0.5, 0.5], constraints=[0, 3, 0, 0])
    assert controls.plateaued(study, 2)  # 0.9 broke its constraint: 0.5 is the best, and twice not beaten since
    assert study.best_trial.number == 0
