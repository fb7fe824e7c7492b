"""The Optuna sweeper's settings (`hydra.sweeper.*`): normalised as Hydra hands them over, and checked
against the composed job config before any study exists, as TRL's `*Config.__post_init__` checks its
own; the sweeper (optuna_sweeper.py) keeps the ask/tell loop."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweep.config import ConfigError
from sweep.data.splits import selection_metric, test_metric
from sweep.study import controls
from sweep.study.search import PRUNERS, SAMPLERS, SINGLE_OBJECTIVE, prunes

POSITIVE = ("n_trials", "n_jobs", "max_failures", "heartbeat_interval", "grace_period")  # whole numbers above 0


@dataclass
class SweeperSettings:
    n_trials: int = 12
    sampler: str = "tpe"
    seed: int | None = 0
    direction: str = "maximize"
    directions: list | None = None
    objective: object = "sst2/acc"  # a metric, or a list of them
    pruner: str = "none"
    storage: str | None = None
    study_name: str | None = None
    n_jobs: int = 1
    max_failures: int = 3
    heartbeat_interval: int = 60
    grace_period: int = 180
    params: dict = field(default_factory=dict)
    sampler_options: dict | None = None
    enqueue: list | None = None
    constraints: object = None  # the setting as given; check() parses it into `limits`
    stop_after: int | None = None

    def __post_init__(self) -> None:
        """Plain containers for Hydra's, one direction per objective, and what a trial's value is:
        each task objective read on the development slice (`selection`), never on test."""
        if isinstance(self.sampler_options, DictConfig):
            self.sampler_options = OmegaConf.to_container(self.sampler_options)
        if isinstance(self.params, DictConfig):
            self.params = OmegaConf.to_container(self.params, resolve=True)
        self.params = self.params or {}
        objectives = list(self.objective) if isinstance(self.objective, (list, ListConfig)) else [self.objective]
        self.objectives = [str(o) for o in objectives]
        self.directions = [str(d) for d in (self.directions or [self.direction] * len(self.objectives))]
        self.selection = [selection_metric(o) for o in self.objectives]
        self.limits: list[controls.Constraint] = []  # the parsed constraints (check() fills it)

    def check(self, config: DictConfig) -> None:
        """Every setting against its allowed values and the job's config (its eval tasks, its
        development slice, its intermediate scores); ConfigError (one line) on the first that fails."""
        for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"hydra.sweeper.{key}={getattr(self, key)!r} is invalid: choose one of "
                                  f"{', '.join(allowed)}")
        if not self.objectives or len(self.directions) != len(self.objectives):
            raise ConfigError(f"hydra.sweeper.objective={self.objectives}, directions={self.directions}: name at least "
                              "one objective and one direction each, e.g. hydra.sweeper.objective=sst2/acc")
        for d in self.directions:
            if d not in ("maximize", "minimize"):
                raise ConfigError(f"hydra.sweeper.direction={d!r} is invalid: choose maximize or minimize")
        self._check_objectives(config)
        for key in POSITIVE:
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ConfigError(f"hydra.sweeper.{key}={value!r} is invalid: must be a positive integer")
        self.limits = controls.parse_constraints(self.constraints)
        stop = self.stop_after
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < 1):
            raise ConfigError(f"hydra.sweeper.stop_after={stop!r} is invalid: give a number of completed trials "
                              "without improvement (e.g. 5), or null")
        if len(self.objectives) > 1:
            for key, value in (("stop_after", stop),
                               ("sampler", self.sampler if self.sampler in SINGLE_OBJECTIVE else None)):
                if value is not None:
                    raise ConfigError(f"hydra.sweeper.{key}={value} needs a single objective (this study has "
                                      f"{len(self.objectives)})")
        if self.enqueue and self.sampler == "grid":
            raise ConfigError("hydra.sweeper.enqueue has no use with sampler=grid (every point of the grid runs); "
                              "use another sampler or drop enqueue")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"hydra.sweeper.grace_period={self.grace_period} must exceed heartbeat_interval="
                              f"{self.heartbeat_interval} (a live worker would be taken for dead)")

    def _check_objectives(self, config: DictConfig) -> None:
        tasks = list(config.eval.tasks)
        for o in self.objectives:
            if "/" in o and test_metric(o).split("/")[0] not in tasks:
                raise ConfigError(f"hydra.sweeper.objective={o!r}: not a metric of the eval tasks "
                                  f"({', '.join(tasks)}); name one as <task>/<metric>, e.g. {tasks[0]}/acc")
            if "/" in o and not config.data.dev_size:
                raise ConfigError(f"hydra.sweeper.objective={o!r} is read on the development slice, and "
                                  "data.dev_size=0 carves none: set data.dev_size (e.g. 200)")
        if len(self.objectives) > 1 and prunes(self.pruner):
            raise ConfigError("hydra.sweeper.pruner: Optuna cannot prune multi-objective studies; use pruner=none")
        if prunes(self.pruner) and not config.eval.every_steps:
            raise ConfigError(f"hydra.sweeper.pruner={self.pruner} needs intermediate scores: set eval.every_steps "
                              "(e.g. eval.every_steps=10)")
