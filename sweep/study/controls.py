"""What steers a study beside its sampler: configurations run first (`hydra.sweeper.enqueue`),
limits a configuration must respect (`hydra.sweeper.constraints`), and stopping once the study has
stopped improving (`hydra.sweeper.stop_after`).

Why our own: Optuna has the pieces (`enqueue_trial`; `Trial.set_constraint`, which its TPE, GP and
NSGA samplers and `best_trial` honour, and which replaces the `constraints_func` Optuna 5 deprecates)
but no way to name them from a Hydra config; and its Terminator bounds regret with a Gaussian process
per trial, where users ask for the plain rule "stop after N trials without a better value".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState

from sweep.config import ConfigError
from sweep.data.splits import DEV_PREFIX

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w./-]*)\s*(<=|>=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`<metric> <= <bound>` or `<metric> >= <bound>` over a metric the trial's run logs."""
    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """How far `value` is outside the bound: > 0 infeasible, <= 0 feasible (Optuna's convention)."""
        return value - self.bound if self.op == "<=" else self.bound - value


def parse_constraints(items) -> list[Constraint]:
    """hydra.sweeper.constraints: a list of `<metric> <= <number>` / `<metric> >= <number>`."""
    if items is None:
        return []
    if not isinstance(items, (list, ListConfig)):
        raise ConfigError(f"hydra.sweeper.constraints={items!r} is invalid: give a list, e.g. "
                          "'hydra.sweeper.constraints=[trainable_params <= 1e6]'")
    out = []
    for item in items:
        m = _CONSTRAINT.match(str(item))
        if not m:
            raise ConfigError(f"hydra.sweeper.constraints: {str(item)!r} is not `<metric> <= <number>` or "
                              "`<metric> >= <number>`, e.g. peak_rss_mb <= 4000")
        if "/" in m[1] and not m[1].startswith(DEV_PREFIX):
            raise ConfigError(f"hydra.sweeper.constraints: {m[1]} is a test score, and no test score steers a choice; "
                              f"constrain the development score instead, e.g. '{DEV_PREFIX}{m[1]} {m[2]} {m[3]}'")
        out.append(Constraint(m[1], m[2], float(m[3])))
    return out


def violations(constraints: list[Constraint], metrics: dict[str, float], trial_number: int) -> dict[str, float]:
    """{constraint: its violation} for a finished trial's metrics; ConfigError when its run does not
    log a constrained metric (no trial would: stop, as for a missing objective)."""
    out = {}
    for c in constraints:
        if c.metric not in metrics:
            raise ConfigError(f"hydra.sweeper.constraints: trial {trial_number}'s run has no metric {c.metric!r}; "
                              f"it has {', '.join(sorted(m for m in metrics if '/' not in m))}")
        out[c.text] = c.violation(float(metrics[c.metric]))
    return out


def check_params(params: dict, space: dict[str, optuna.distributions.BaseDistribution], where: str) -> dict:
    """A configuration to enqueue: every key a swept parameter, every value one its distribution holds."""
    for key, value in params.items():
        if key not in space:
            raise ConfigError(f"hydra.sweeper.enqueue: {where} sets {key}, which the search space does not sweep "
                              f"(it sweeps {', '.join(space) or 'nothing'})")
        dist = space[key]
        try:
            inside = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise ConfigError(f"hydra.sweeper.enqueue: {where} sets {key}={value!r}, outside its search space "
                              f"({dist!r})")
    return dict(params)


def enqueued(items, space: dict, load_study: Callable[[str], optuna.Study]) -> list[dict]:
    """hydra.sweeper.enqueue: configurations to run first, each a mapping of swept parameters, or
    `{study: NAME, best: N}` for the best N completed trials of an earlier study in the same storage
    (their values of the parameters this space sweeps)."""
    if items is None:
        return []
    items = OmegaConf.to_container(items, resolve=True) if isinstance(items, (ListConfig, DictConfig)) else items
    if not isinstance(items, list):
        raise ConfigError(f"hydra.sweeper.enqueue={items!r} is invalid: give a list, e.g. "
                          "'hydra.sweeper.enqueue=[{lora.r: 8}]' or '[{study: NAME, best: 3}]'")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"hydra.sweeper.enqueue[{i}]={item!r} is invalid: give a mapping of swept parameters")
        if set(item) == {"study", "best"}:
            out += [check_params({k: v for k, v in t.params.items() if k in space}, space,
                                 f"trial {t.number} of study {item['study']!r}")
                    for t in best_of(load_study(str(item["study"])), item["best"])]
        else:
            out.append(check_params(item, space, f"enqueue[{i}]"))
    return out


def best_of(study: optuna.Study, n) -> list:
    """The best `n` completed (feasible) trials of a single-objective study, best first."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"hydra.sweeper.enqueue: best={n!r} is invalid: must be a positive integer")
    if len(study.directions) != 1:
        raise ConfigError(f"hydra.sweeper.enqueue: study {study.study_name!r} has several objectives; list its "
                          "configurations instead")
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    return sorted(done, key=lambda t: (-sign * t.value, t.number))[:n]


def feasible(trial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def plateaued(study: optuna.Study, patience: int) -> bool:
    """Whether the last `patience` completed feasible trials (in the order they completed) all
    failed to beat the best value before them (single objective)."""
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)),
                  key=lambda t: (t.datetime_complete, t.number))
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    best, since = -math.inf, 0
    for t in done:
        if sign * t.value > best:
            best, since = sign * t.value, 0
        else:
            since += 1
    return since >= patience
