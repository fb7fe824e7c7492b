"""The Optuna trial a job runs under, handed over by value.

The sweeper passes the study name, trial number, parent run, objectives and pruner as the job's
`trial.*` overrides, and the storage URL in the environment (STORAGE_ENV, so that no command line
shows its password). The job re-attaches to its trial from the storage, so pruning, the trial's
tags and the parent link work whichever Hydra launcher runs it: in this process, in a joblib
worker or on a SLURM node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna
from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.study.search import make_pruner, prunes
from sweep.study.storage import RETRY_SECONDS, STORAGE_ENV, make_storage
from sweep.vocabulary import PARENT_RUN, STUDY_NAME, TRIAL_NUMBER


@dataclass
class TrialContext:
    trial: optuna.Trial
    study_name: str
    objectives: list[str]          # metric names, e.g. ["sst2/acc"] or ["sst2/acc", "trainable_params"]
    parent_run_id: str | None      # the study's MLflow parent run
    pruning: bool = False          # a pruner is on: a diverged trial is pruned rather than failed

    @property
    def prunable(self) -> bool:
        return len(self.objectives) == 1  # Optuna prunes single-objective studies only

    def tags(self) -> dict[str, str]:
        """The MLflow tags that make the job's run a child of the study's parent run."""
        return {STUDY_NAME: self.study_name, TRIAL_NUMBER: str(self.trial.number),
                **({PARENT_RUN: self.parent_run_id} if self.parent_run_id else {})}


def overrides(study_name: str, number: int, parent_run_id: str | None, objectives: list[str], pruner: str) -> list[str]:
    """The `trial.*` overrides the sweeper adds to a trial's job."""
    quoted = ",".join(f"'{o}'" for o in objectives)
    return [f"trial.study_name='{study_name}'", f"trial.number={number}",
            f"trial.parent_run_id={parent_run_id or 'null'}", f"trial.objectives=[{quoted}]", f"trial.pruner={pruner}"]


def attach(cfg: DictConfig) -> TrialContext | None:
    """The trial named by `cfg.trial`, loaded from the storage in the environment; None outside a study."""
    t = cfg.trial
    if t.study_name is None:
        return None
    url = os.environ.get(STORAGE_ENV)
    if not url:
        raise ConfigError(f"trial.study_name={t.study_name} is set but ${STORAGE_ENV} is not: a trial's job "
                          f"finds its study through ${STORAGE_ENV} (the sweeper sets it for the jobs it launches)")
    # A RandomSampler: attaching must not sample (a grid sampler would claim a grid point). The sweeper
    # made the trial in this database moments ago: one out of reach now is restarting, so wait for it.
    study = optuna.load_study(study_name=t.study_name, storage=make_storage(url, wait_seconds=RETRY_SECONDS),
                              sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(t.pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, t.number)
    return TrialContext(optuna.Trial(study, trial_id), t.study_name, list(t.objectives), t.parent_run_id,
                        pruning=prunes(t.pruner))


def report_callback(ctx: TrialContext | None, score_slice, every_steps: int, slice_size: int, log_metrics):
    """A TrainerCallback that scores the first `slice_size` development examples every
    `every_steps` steps (`score_slice`: metrics dev/<task>/<metric>), logs the curve
    (`slice/dev/<task>/<metric>`) with `log_metrics`, reports it to the trial and stops the job
    when Optuna prunes it."""
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every_steps:
                return
            was_training = model.training
            model.eval()
            try:
                metrics = score_slice()
            finally:
                model.train(was_training)
            log_metrics({f"slice/{k}": v for k, v in metrics.items()}, step=state.global_step)
            if ctx is None or not ctx.prunable:
                return
            objective = ctx.objectives[0]
            if objective not in metrics:
                return  # e.g. a run-level objective such as trainable_params: nothing to report
            value = metrics[objective]
            ctx.trial.report(value, state.global_step)
            if ctx.trial.should_prune():
                raise optuna.TrialPruned(
                    f"trial {ctx.trial.number} at step {state.global_step}: {objective}={value:.4g} "
                    f"on the first {slice_size} development examples")

    return ReportToTrial()
