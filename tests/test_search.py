"""Search spaces from Hydra's override grammar, samplers, pruners, storages and trial reporting."""

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.config import ConfigError
from sweep.study.search import grid_of, make_pruner, make_sampler, parse_search_space
from sweep.study.storage import make_storage
from sweep.study.trials import TrialContext, report_callback


def test_every_grammar_form():
    space = parse_search_space([
        "lora.r=choice(1,2,4)", "lora.target_modules=choice(qv,qkvo,all-linear)",
        "lora.alpha=range(4,64,step=4)", "train.lr=tag(log,interval(1e-5,1e-3))",
        "lora.dropout=interval(0,0.2)", "train.max_steps=tag(int,interval(10,50))", "train.grad_accum=tag(log,range(1,9))",
        "train.warmup_ratio=range(0.0,0.2,step=0.1)", "seed=3", "data=rte",
    ])
    d = space.distributions
    assert d["lora.r"] == CategoricalDistribution([1, 2, 4])
    assert d["lora.target_modules"] == CategoricalDistribution(["qv", "qkvo", "all-linear"])
    assert d["lora.alpha"] == IntDistribution(4, 60, step=4)  # Hydra's range excludes its stop
    assert d["train.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert d["lora.dropout"] == FloatDistribution(0, 0.2)
    assert d["train.max_steps"] == IntDistribution(10, 50)
    assert d["train.grad_accum"] == IntDistribution(1, 8, log=True)
    assert d["train.warmup_ratio"] == FloatDistribution(0.0, 0.2, step=0.1)  # as Hydra enumerates it: 0, .1, .2
    assert space.fixed == ["seed=3", "data=rte"]
    assert space.overrides({"lora.r": 2}) == ["seed=3", "data=rte", "lora.r=2"]


def test_grid_needs_discrete_params():
    assert grid_of(parse_search_space(["lora.r=choice(2,8)", "lora.alpha=range(8,17,step=8)"])) == {
        "lora.r": [2, 8], "lora.alpha": [8, 16]}
    with pytest.raises(ConfigError, match="sampler=grid: train.lr is a continuous interval"):
        grid_of(parse_search_space(["train.lr=interval(1e-4,1e-3)"]))


def run_toy_study(name: str, options: dict | None = None, trials: int = 16) -> optuna.Study:
    """`trials` asks and tells of make_sampler(name) on a 2-d bowl with its minimum at (1, -2)."""
    space = parse_search_space(["x=interval(-3,3)", "y=interval(-3,3)"])
    study = optuna.create_study(sampler=make_sampler(name, 0, space, options))
    for _ in range(trials):
        t = study.ask(space.distributions)
        study.tell(t, (t.params["x"] - 1) ** 2 + (t.params["y"] + 2) ** 2)
    return study


def test_qmc_walks_a_sobol_sequence_and_cmaes_adapts_after_its_start_up_trials():
    """hydra.sweeper.sampler=qmc|cmaes with their own options: QMC's points after the first (which
    fixes the space) are the unscrambled Sobol sequence 0, 1/2, 3/4, 1/4 of [-3, 3]; CMA-ES, re-seeded
    per trial like every sampler, still carries its generation from trial to trial through the study."""
    qmc = run_toy_study("qmc", {"qmc_type": "sobol", "scramble": False}, trials=5)
    assert [t.params["x"] for t in qmc.trials[1:]] == [-3.0, 0.0, 1.5, -1.5]
    cmaes = run_toy_study("cmaes", {"n_startup_trials": 2})
    generations = [t.system_attrs.get("cma:generation") for t in cmaes.trials]
    assert generations[:2] == [None, None] and generations[-1] >= 2  # its own search from the third trial
    assert run_toy_study("tpe").best_value < 1.0 and cmaes.best_value < 1.5


def test_unknown_sampler_options_and_pruner():
    with pytest.raises(ConfigError, match="hydra.sweeper.sampler='bohb' is invalid: choose one of tpe, random"):
        make_sampler("bohb", 0, parse_search_space([]))
    with pytest.raises(ConfigError, match="sampler_options.sigma: not an argument of cmaes's sampler .CmaEsSampler.; "
                                          "it takes x0, sigma0"):
        make_sampler("cmaes", 0, parse_search_space([]), {"sigma": 1})
    with pytest.raises(ConfigError, match="sampler_options for sampler=qmc: "):
        make_sampler("qmc", 0, parse_search_space([]), {"qmc_type": "lattice"})
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner='early' is invalid"):
        make_pruner("early")


def test_journal_storage_is_shared_by_two_handles(tmp_path):
    path = str(tmp_path / "optuna.journal")
    a = optuna.create_study(study_name="s", storage=make_storage(path))
    a.optimize(lambda t: t.suggest_int("x", 0, 3), n_trials=2)
    b = optuna.load_study(study_name="s", storage=make_storage(path))
    assert len(b.trials) == 2
    assert isinstance(make_storage(f"sqlite:///{tmp_path}/o.db"), optuna.storages.RDBStorage)


def test_report_callback_prunes_a_trial_below_the_median():
    logged = []
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for value in (0.8, 0.9):
        t = study.ask()
        t.report(value, 10)
        study.tell(t, value)

    class Model:
        training = True

        def eval(self):
            self.training = False

        def train(self, mode):
            self.training = mode

    class State:
        global_step = 10

    trial = study.ask()
    cb = report_callback(TrialContext(trial, "s", ["sst2/acc"], None), lambda: {"sst2/acc": 0.1}, 5, 64,
                         lambda metrics, step: logged.append((metrics, step)))
    model = Model()
    with pytest.raises(optuna.TrialPruned, match="at step 10: sst2/acc=0.1 on the first 64 development examples"):
        cb.on_step_end(None, State(), None, model=model)
    assert model.training  # scoring switched to eval mode and back
    assert logged == [({"slice/sst2/acc": 0.1}, 10)]  # the curve is logged before the pruning decision

    good = study.ask()
    report_callback(TrialContext(good, "s", ["sst2/acc"], None), lambda: {"sst2/acc": 0.95}, 5, 64,
                    lambda metrics, step: None).on_step_end(None, State(), None, model=Model())
    assert not good.should_prune()
