"""The Optuna trial a job runs under. The sweeper runs trials in-process and sets it here, so the
job can tag its MLflow run as the study's child and report intermediate scores for pruning."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import optuna


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


_current: TrialContext | None = None


def current() -> TrialContext | None:
    return _current


@contextmanager
def running(ctx: TrialContext):
    global _current
    _current = ctx
    try:
        yield ctx
    finally:
        _current = None


def report_callback(ctx: TrialContext | None, score_slice, every_steps: int, slice_size: int):
    """A TrainerCallback that scores the first `slice_size` validation examples every
    `every_steps` steps, logs the curve (`slice/<metric>`), reports it to the trial and stops
    the job when Optuna prunes it."""
    from transformers import TrainerCallback

    from sweep import tracking

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
            tracking.log_metrics({f"slice/{k}": v for k, v in metrics.items()}, step=state.global_step)
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
                    f"on the first {slice_size} examples")

    return ReportToTrial()
