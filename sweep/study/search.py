"""Optuna search spaces from Hydra's override grammar, and the study's sampler and pruner.

`choice(a,b)` -> categorical, `range(lo,hi,step=s)` -> int (or stepped float) grid, `interval(lo,hi)`
-> float (Hydra parses interval ends as floats: `tag(int, interval(lo,hi))` makes it an int),
`tag(log, ...)` -> log scale; plain values are fixed.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from sweep.config import ConfigError
from sweep.runtime.retry import first_line

PRUNERS = ("none", "median", "hyperband")
# Optuna flags the GP and NSGA samplers and the matplotlib plots as experimental: they are what we use.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclass
class SearchSpace:
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)   # overrides passed to every trial unchanged

    def overrides(self, params: dict) -> list[str]:
        """The command-line overrides of one trial."""
        return [*self.fixed, *(f"{k}={v}" for k, v in params.items())]


def distribution(override: Override) -> BaseDistribution:
    key, value = override.get_key_element(), override.value()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    log = "log" in value.tags
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        if value.shuffle:
            raise ConfigError(f"{key}: shuffle(range(...)) has no meaning for Optuna; use range(...)")
        ends = (value.start, value.stop, value.step)
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}=range{ends} is empty")
        if all(isinstance(x, int) for x in ends):
            return IntDistribution(values[0], values[-1], step=value.step, log=log and value.step == 1)
        return FloatDistribution(values[0], values[-1], step=value.step)
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        if "int" in value.tags:
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(f"{key}: unsupported sweep {override.input_line}; use choice, range, interval or tag(log, ...)")


def parse_search_space(arguments: list[str]) -> SearchSpace:
    """Split command-line/config overrides into Optuna distributions and fixed overrides."""
    space = SearchSpace()
    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            space.distributions[override.get_key_element()] = distribution(override)
        else:
            space.fixed.append(override.input_line)
    return space


def grid_of(space: SearchSpace) -> dict[str, list]:
    """The GridSampler's search space; intervals have no grid, so they are refused."""
    grid = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step:
            n = round((dist.high - dist.low) / dist.step)
            grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise ConfigError(f"hydra.sweeper.sampler=grid: {name} is a continuous interval; "
                              "use choice(...) or range(...)")
    return grid


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls `study.stop()` once the grid is done, which only works inside
    `study.optimize`; the sweeper runs trials with ask/tell and stops at the grid's size itself."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def grid_size(space: SearchSpace) -> int:
    return math.prod(len(v) for v in grid_of(space).values())


# The samplers a sweep can name; grid is built from the search space apart (AskTellGridSampler).
SAMPLER_CLASSES = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                   "gp": optuna.samplers.GPSampler, "nsgaii": optuna.samplers.NSGAIISampler,
                   "cmaes": optuna.samplers.CmaEsSampler, "qmc": optuna.samplers.QMCSampler}
SAMPLERS = (*SAMPLER_CLASSES, "grid")
SINGLE_OBJECTIVE = ("cmaes",)  # samplers that cannot search several objectives
# Samplers that give trial n the n-th point of a seeded sequence (distinct across workers already):
# re-seeding them per trial would break the sequence.
SEQUENCES = ("grid", "qmc")
NOT_OPTIONS = ("seed", "constraints_func", "search_space", "self", "args", "kwargs")


def sampler_options(name: str, options: dict | None) -> dict:
    """hydra.sweeper.sampler_options, checked against the sampler's own arguments (e.g. for cmaes:
    sigma0, n_startup_trials, restart_strategy; for qmc: qmc_type, scramble)."""
    options = dict(options or {})
    cls = AskTellGridSampler if name == "grid" else SAMPLER_CLASSES.get(name)
    known = [k for k in inspect.signature(cls).parameters if k not in NOT_OPTIONS] if cls else []
    for key in options:
        if key not in known:
            raise ConfigError(f"hydra.sweeper.sampler_options.{key}: not an argument of {name}'s sampler "
                              f"({cls.__name__ if cls else name}); it takes {', '.join(known) or 'none'}")
    return options


def _sampler(name: str, seed: int | None, space: SearchSpace, options: dict) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={name!r} is invalid: choose one of {', '.join(SAMPLERS)}")
    try:
        if name == "grid":
            return AskTellGridSampler(grid_of(space), seed=seed, **options)
        return SAMPLER_CLASSES[name](seed=seed, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.sampler_options for sampler={name}: {first_line(e)}") from None


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial `number` of a study seeded with `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


class SeedPerTrial(optuna.samplers.BaseSampler):
    """A sampler re-seeded for every trial from the study seed and the trial's number.

    Workers sharing one study each hold a sampler; seeded alike, they would draw the same sequence
    and run the same configurations. Trial numbers are unique in a study, so seeding by them makes
    concurrent workers draw differently by construction, and a sweep stays reproducible from its
    seed whatever the number of workers (exactly so while the sampler is still sampling at random,
    as TPE does for its first trials)."""

    def __init__(self, make: Callable[[int | None], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)


def make_sampler(name: str, seed: int | None, space: SearchSpace, options: dict | None = None
                 ) -> optuna.samplers.BaseSampler:
    """`name`'s sampler with `options` (its own arguments); with a seed, re-seeded per trial
    (SeedPerTrial), except the samplers of a fixed sequence (grid, qmc)."""
    options = sampler_options(name, options)
    if seed is None or name in SEQUENCES:
        return _sampler(name, seed, space, options)
    return SeedPerTrial(lambda s: _sampler(name, s, space, options), seed)


def prunes(pruner: str | None) -> bool:
    """Whether `hydra.sweeper.pruner` names a pruner (none and null do not)."""
    return pruner not in ("none", None)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if not prunes(name):
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise ConfigError(f"hydra.sweeper.pruner={name!r} is invalid: choose one of {', '.join(PRUNERS)}")


