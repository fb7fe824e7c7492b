"""A Hydra sweeper on current Optuna (selected with `hydra/sweeper=optuna`).

Why our own: the published hydra-optuna-sweeper pins optuna<3 and cannot prune trials, resume a
study or hand the trial to the job. This one keeps Hydra's override grammar for search spaces,
runs trials in-process (the job reports to its trial), stores studies where several workers can
share them, resumes an interrupted study, and records one MLflow parent run per study with a
child run per trial.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import TrialState

from sweep import trials
from sweep.config import ConfigError
from sweep.search import SearchSpace, grid_size, make_pruner, make_sampler, make_storage, parse_search_space
from sweep.tracking import redact

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Optuna flags the matplotlib plots and some samplers as experimental; they are what we use.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class SweepFailedError(RuntimeError):
    """Too many trials failed (hydra.sweeper.max_failures)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of workers on this host that no longer exist, and queue their
    parameters again so they are retried. (Optuna's own heartbeat works only inside
    `study.optimize` and not for journal storages; trials here are run with ask/tell.)"""
    recovered = []
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker recovered it first
                continue
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            recovered.append(t.number)
    return recovered


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def settled_trials(study: optuna.Study) -> list:
    """Trials that use up the budget (n_trials): complete, pruned, or failed for a reason of their
    own. Not counted: trials failed because their worker died (they are run again) and a worker's
    surplus ask for a trial that another worker had already taken."""
    all_trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in all_trials}
    return [t for t in all_trials if t.state in FINISHED or (
        t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get("surplus"))]


def failures(study: optuna.Study, since: int = 0) -> int:
    """Trials numbered `since` or later that failed for a reason of their own."""
    return sum(1 for t in settled_trials(study) if t.state == TrialState.FAIL and t.number >= since)


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int = 12, sampler: str = "tpe", seed: int | None = 0,
                 direction: str = "maximize", directions=None, objective="sst2/acc",
                 pruner: str = "none", storage: str | None = None, study_name: str | None = None,
                 n_jobs: int = 1, max_failures: int = 3, params=None) -> None:
        self.n_trials, self.sampler, self.seed, self.pruner = n_trials, sampler, seed, pruner
        objectives = list(objective) if isinstance(objective, (list, ListConfig)) else [objective]
        dirs = list(directions) if directions else [direction] * len(objectives)
        self.objectives, self.directions = [str(o) for o in objectives], [str(d) for d in dirs]
        self.storage_url, self.study_name = storage, study_name
        self.n_jobs, self.max_failures = n_jobs, max_failures
        self.params = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else (params or {})

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> None:
        self._check()
        space = parse_search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        space.fixed = [o for o in space.fixed if not o.startswith(("hydra.", "hydra/"))]
        if self.sampler == "grid" and grid_size(space) < self.n_trials:
            print(f"[optuna] the grid has {grid_size(space)} points: n_trials {self.n_trials} -> {grid_size(space)}")
            self.n_trials = grid_size(space)
        study = self._study(space)
        self.first_trial = len(study.trials)  # failures of earlier invocations do not count again
        parent = self._parent_run(study, space)
        self._recover(study)
        workers = self._spawn_workers()
        try:
            self._run_trials(study, space, parent)
        finally:
            for w in workers:
                w.wait()
        self._report(study, space, parent)

    def _check(self) -> None:
        if len(self.directions) != len(self.objectives):
            raise ConfigError(f"hydra.sweeper.directions={self.directions} must name one direction per objective "
                              f"({self.objectives})")
        for d in self.directions:
            if d not in ("maximize", "minimize"):
                raise ConfigError(f"hydra.sweeper.direction={d!r} is invalid: choose maximize or minimize")
        if len(self.objectives) > 1 and self.pruner not in ("none", None):
            raise ConfigError("hydra.sweeper.pruner: Optuna cannot prune multi-objective studies; use pruner=none")
        if self.pruner not in ("none", None) and not self.config.eval.every_steps:
            raise ConfigError(f"hydra.sweeper.pruner={self.pruner} needs intermediate scores: set eval.every_steps "
                              "(e.g. eval.every_steps=10)")
        if not (isinstance(self.n_trials, int) and self.n_trials > 0):
            raise ConfigError(f"hydra.sweeper.n_trials={self.n_trials!r} is invalid: must be a positive integer")

    def _study(self, space: SearchSpace) -> optuna.Study:
        root = Path(self.config.paths.root)
        url = self.storage_url or str(root / "optuna.journal")
        name = self.study_name or self.default_study_name(space)
        self.study_name_resolved, self.storage_resolved = name, url
        return optuna.create_study(
            study_name=name, storage=make_storage(url), load_if_exists=True, directions=self.directions,
            sampler=make_sampler(self.sampler, self.seed, space), pruner=make_pruner(self.pruner))

    def default_study_name(self, space: SearchSpace) -> str:
        """The experiment plus a hash of what defines the search: rerunning the same command
        resumes the same study; changing the space or objective starts a new one."""
        key = json.dumps([sorted(space.fixed), sorted((k, repr(d)) for k, d in space.distributions.items()),
                          self.objectives, self.directions, self.sampler], sort_keys=True)
        return f"{self.config.tracking.experiment}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def _spawn_workers(self) -> list[subprocess.Popen]:
        """n_jobs - 1 more processes running this same command on the same study."""
        if self.n_jobs <= 1:
            return []
        cmd = [sys.executable, *sys.argv, "hydra.sweeper.n_jobs=1",
               f"hydra.sweeper.study_name={self.study_name_resolved}",
               f"hydra.sweeper.storage={self.storage_resolved}"]
        print(f"[optuna] starting {self.n_jobs - 1} more worker process(es)", flush=True)
        return [subprocess.Popen(cmd) for _ in range(self.n_jobs - 1)]

    def _run_trials(self, study: optuna.Study, space: SearchSpace, parent: str | None) -> None:
        while True:
            done, running = len(settled_trials(study)), count(study, TrialState.RUNNING)
            if done >= self.n_trials:
                return
            failed = failures(study, since=self.first_trial)
            if failed >= self.max_failures:
                raise SweepFailedError(
                    f"{failed} trials failed (hydra.sweeper.max_failures={self.max_failures}); the sweep "
                    f"stops. See the FAILED runs' traceback.txt in MLflow, fix the cause, and rerun the same "
                    f"command to resume study {study.study_name!r}")
            if done + running >= self.n_trials:
                time.sleep(1.0)  # the last trials are running in other workers (or their worker died)
                self._recover(study)
                continue
            trial = study.ask(space.distributions)
            trial.set_user_attr("worker", WORKER)
            if self._is_surplus(study, trial):
                continue
            self._run_one(study, trial, space, parent)

    def _is_surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Two workers may ask at once for the last trial: the later one stands down."""
        earlier = [t for t in [*settled_trials(study), *study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                   if t.number < trial.number]
        if len(earlier) < self.n_trials:
            return False
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return True

    def _run_one(self, study, trial, space: SearchSpace, parent: str | None) -> None:
        overrides = [*space.overrides(trial.params), f"tracking.sweep_id={study.study_name}"]
        ctx = trials.TrialContext(trial, study.study_name, self.objectives, parent,
                                  pruning=self.pruner not in ("none", None))
        with trials.running(ctx):
            try:
                [ret] = self.launcher.launch([overrides], initial_job_idx=trial.number)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the job's run is KILLED; retry the trial later
                study.tell(trial, state=TrialState.FAIL)
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
                print(f"\n[optuna] interrupted: trial {trial.number} is queued again; rerun the same command to "
                      f"resume study {study.study_name!r}", file=sys.stderr, flush=True)
                raise
        outcome = ret.return_value
        if outcome.status == "FINISHED":
            missing = [o for o in self.objectives if o not in outcome.metrics]
            if missing:
                study.tell(trial, state=TrialState.FAIL)
                print(f"[optuna] trial {trial.number}: the run has no metric {missing[0]!r} "
                      f"(hydra.sweeper.objective); it has {', '.join(sorted(outcome.metrics))}", file=sys.stderr)
                return
            study.tell(trial, [outcome.metrics[o] for o in self.objectives])
        elif outcome.status == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)

    # ------------------------------------------------------------------ MLflow and the report
    def _parent_run(self, study: optuna.Study, space: SearchSpace) -> str | None:
        """The study's MLflow parent run: created once, found again on resume."""
        import mlflow

        from sweep.tracking import open_experiment

        experiment_id = open_experiment(self.config.tracking)  # (creates the store safely if new)
        run_id = study.user_attrs.get("mlflow_parent_run_id")
        client = mlflow.MlflowClient(tracking_uri=self.config.tracking.uri)
        if run_id:
            client.update_run(run_id, status="RUNNING")
            return run_id
        run = client.create_run(experiment_id, run_name=f"study:{study.study_name}",
                                tags={"optuna.study_name": study.study_name, "sweep_id": study.study_name,
                                      "method": "optuna-study"})
        params = {"sampler": self.sampler, "pruner": self.pruner, "n_trials": self.n_trials,
                  "objectives": json.dumps(self.objectives), "directions": json.dumps(self.directions),
                  "storage": self.storage_resolved, "fixed_overrides": json.dumps(space.fixed)}
        params |= {f"space.{k}": repr(d) for k, d in space.distributions.items()}
        for k, v in params.items():
            client.log_param(run.info.run_id, k, redact(str(v))[:6000])
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        return run.info.run_id

    def _recover(self, study: optuna.Study) -> None:
        recovered = recover_dead_trials(study)
        if recovered:
            print(f"[optuna] {len(recovered)} trial(s) of a worker that died were failed and queued again: "
                  f"{recovered}", flush=True)
            self._close_dead_runs(study, recovered)

    def _close_dead_runs(self, study: optuna.Study, numbers: list[int]) -> None:
        """The MLflow runs of trials whose worker died are left RUNNING: mark them KILLED."""
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.config.tracking.uri)
        exp = client.get_experiment_by_name(self.config.tracking.experiment)
        for n in numbers if exp else []:
            for run in client.search_runs([exp.experiment_id], f"tags.`optuna.study_name` = '{study.study_name}' and "
                                          f"tags.`optuna.trial_number` = '{n}' and attributes.status = 'RUNNING'"):
                client.set_tag(run.info.run_id, "optuna.state", "FAIL")
                client.set_tag(run.info.run_id, "error", "its worker process died; the trial was queued again")
                client.set_terminated(run.info.run_id, "KILLED")

    def reproduce_command(self, space: SearchSpace, params: dict) -> str:
        return redact(shlex.join(["python", "sweep.py", *space.overrides(params)]))

    def _report(self, study: optuna.Study, space: SearchSpace, parent: str | None) -> None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.config.tracking.uri)
        states = {s.name: count(study, s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        if not count(study, TrialState.COMPLETE):
            best = []
        else:  # single objective: the best trial (the first of any tie); several: the Pareto front
            best = [study.best_trial] if len(self.objectives) == 1 else study.best_trials
        lines = [f"\n[optuna] study {study.study_name!r}: " + ", ".join(f"{n} {k.lower()}" for k, n in states.items())]
        summary = []
        for t in best:
            values = dict(zip(self.objectives, t.values))
            cmd = self.reproduce_command(space, t.params)
            summary.append({"trial": t.number, "values": values, "params": t.params, "command": cmd})
            lines.append(f"[optuna] best trial {t.number}: {values} params {t.params}\n[optuna]   reproduce: {cmd}")
        print("\n".join(lines), flush=True)
        if parent:
            if len(best) == 1:
                for o, v in zip(self.objectives, best[0].values):
                    client.log_metric(parent, f"best/{o}", v)
            name = "best_trial.json" if len(self.objectives) == 1 else "pareto_front.json"
            client.log_text(parent, json.dumps(summary, indent=1, default=str), name)
            self._log_plots(client, parent, study)
            client.set_terminated(parent, "FINISHED")

    def _log_plots(self, client, parent: str, study: optuna.Study) -> None:
        """Optimization history, parameter importances and (multi-objective) the Pareto front."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        first = self.objectives[0]
        if len(self.objectives) == 1:
            plots = {"optimization_history": lambda: ovm.plot_optimization_history(study, target_name=first),
                     "param_importances": lambda: ovm.plot_param_importances(study, target_name=first)}
        else:
            plots = {"pareto_front": lambda: ovm.plot_pareto_front(study, target_names=self.objectives),
                     "param_importances": lambda: ovm.plot_param_importances(
                         study, target=lambda t: t.values[0], target_name=first)}
        with tempfile.TemporaryDirectory() as tmp:
            for name, plot in plots.items():
                try:
                    plot()
                    plt.gcf().savefig(Path(tmp) / f"{name}.png", dpi=100, bbox_inches="tight")
                    client.log_artifact(parent, str(Path(tmp) / f"{name}.png"), "plots")
                except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. too few trials
                    print(f"[optuna] no {name} plot: {e}", file=sys.stderr)
                finally:
                    plt.close("all")
