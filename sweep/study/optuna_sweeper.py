"""A Hydra sweeper on current Optuna (selected with `hydra/sweeper=optuna`): the ask/tell loop.

Why our own: the published hydra-optuna-sweeper pins optuna<3 and cannot prune trials, resume a
study or hand the trial to the job. This one keeps Hydra's override grammar for search spaces,
hands each trial to its job by value (`trial.*` overrides, the storage in the environment), so
any Hydra launcher can run the jobs (in this process, joblib, SLURM through submitit), stores
studies where many workers on many hosts can share them, beats for its running trials so that
the trials of a dead worker are retried elsewhere, and resumes an interrupted study. The MLflow
parent run and the end-of-study report live in `sweep/study/study_runs.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig
from optuna.trial import TrialState

from sweep.config import ConfigError
from sweep.runtime import processes
from sweep.runtime.cli import refuse
from sweep.runtime.interrupts import Terminated, install_signal_handlers
from sweep.runtime.secrets import redact
from sweep.study import controls, study_runs, trials
from sweep.study.budget import (
    SURPLUS,
    count,
    failures,
    last_settled,
    recover_local_dead_trials,
    retried,
    settled_trials,
    stand_down_queued_retries,
)
from sweep.study.search import (
    SearchSpace,
    grid_size,
    make_pruner,
    make_sampler,
    parse_search_space,
)
from sweep.study.settings import SweeperSettings
from sweep.study.storage import (
    JOURNAL,
    STORAGE_ENV,
    HeartbeatThread,
    fail_stale,
    make_storage,
    requeue,
    storage_url,
    unopened_journal,
)
from sweep.tracking.outage import OUTAGE_SECONDS, TrackingUnavailable
from sweep.tracking.store import client_for, open_experiment
from sweep.vocabulary import INFEASIBLE_TAG, retried_trial

POLL_SECONDS = 1.0  # how often a worker with nothing to run looks at the study again
log = logging.getLogger(__name__)


def worker_id() -> str:
    """host:namespace:pid, recorded on every trial this process asks for (processes.namespace:
    pids are compared only between processes that share one)."""
    return f"{processes.host()}:{processes.namespace()}:{os.getpid()}"


class SweepFailedError(RuntimeError):
    """Too many trials failed (hydra.sweeper.max_failures), or none completed."""


class OptunaSweeper(Sweeper):
    def __init__(self, **options) -> None:
        self.settings = SweeperSettings(**options)  # (checked against the job's config as the sweep starts)
        self.worker = worker_id()

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    @property
    def in_process(self) -> bool:
        """Hydra's basic launcher runs one job at a time here: parallel trials need worker processes."""
        return isinstance(self.launcher, BasicLauncher)

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except ConfigError as e:  # bad sweeper settings, search space or storage: one line, as for jobs
            sys.exit(refuse(e))
        except (SweepFailedError, TrackingUnavailable) as e:  # (its trials are kept: rerunning resumes)
            sys.exit(refuse(e, code=1))

    def _sweep(self, arguments: list[str]) -> None:
        self.settings.check(self.config)
        space = parse_search_space([*(f"{k}={v}" for k, v in self.settings.params.items()), *arguments])
        space.fixed = [o for o in space.fixed if not o.startswith(("hydra.", "hydra/"))]
        if self.settings.sampler == "grid" and grid_size(space) < self.settings.n_trials:
            log.info("the grid has %d points: n_trials %d -> %d", grid_size(space), self.settings.n_trials,
                     grid_size(space))
            self.settings.n_trials = grid_size(space)
        self._sampler(space)  # (bad options: before any study exists)
        first = controls.enqueued(self.settings.enqueue, space.distributions, self._load_study)
        study, created = self._study(space)
        for params in first if created else ():  # (a resumed study has them already)
            study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
        self.first_trial = len(study.trials)  # failures of earlier invocations do not count again
        experiment_id = open_experiment(self.config.tracking)  # (first: a new SQLite store is created under its lock)
        # (its calls ride out a server's restart as the jobs' do, for as long as a job's default allowance at
        # least: the sweep holds no compute while it waits; a job's allowance bounds how long it trains blind)
        self.client = client_for(self.config.tracking, max(self.config.tracking.outage_seconds, OUTAGE_SECONDS))
        parent = study_runs.parent_run(study, created, self.client, experiment_id, self._parent_params(space),
                                       unfinished=len(settled_trials(study)) < self.settings.n_trials)
        self._recover(study)
        install_signal_handlers()  # SIGTERM, like Ctrl-C, reaches the loop below as an exception
        workers = self._spawn_workers()
        try:
            self._run_trials(study, space, parent)
        except (SweepFailedError, ConfigError):
            self._close_parent_failed(parent)
            raise
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the workers stop too, each closing its run
            processes.stop(workers, signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
            raise
        finally:
            for w in workers:
                w.wait()
        self._finish(study, space, parent)

    def _sampler(self, space: SearchSpace) -> optuna.samplers.BaseSampler:
        return make_sampler(self.settings.sampler, self.settings.seed, space, self.settings.sampler_options)

    def _study(self, space: SearchSpace) -> tuple[optuna.Study, bool]:
        """The study, and whether this worker created it (then it also creates the parent run)."""
        url = self._storage()
        name = self.settings.study_name or self.default_study_name(space)
        self.study_name_resolved, self.storage_resolved = name, url
        os.environ[STORAGE_ENV] = url  # for the jobs and the workers this process starts
        kw = dict(study_name=name, directions=self.settings.directions, sampler=self._sampler(space),
                  storage=make_storage(url, self.settings.heartbeat_interval, self.settings.grace_period),
                  pruner=make_pruner(self.settings.pruner))
        try:
            return optuna.create_study(**kw, load_if_exists=False), True
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.create_study(**kw, load_if_exists=True), False

    def _storage(self) -> str:
        """hydra.sweeper.storage, else $OPTUNA_STORAGE, else the project's journal file."""
        return storage_url(self.settings.storage, str(Path(self.config.paths.root) / JOURNAL))

    def _load_study(self, name: str) -> optuna.Study:
        """An earlier study in this sweep's storage, read-only (enqueue's `{study: NAME, best: N}`)."""
        url = self._storage()
        if unopened_journal(url):
            raise ConfigError(f"hydra.sweeper.enqueue: no study {name!r}: there is no journal {redact(url)} yet")
        try:
            return optuna.load_study(study_name=name, storage=make_storage(url, self.settings.heartbeat_interval,
                                                                           self.settings.grace_period))
        except KeyError:
            raise ConfigError(f"hydra.sweeper.enqueue: no study {name!r} in {redact(url)}") from None

    def default_study_name(self, space: SearchSpace) -> str:
        """The experiment plus a hash of what defines the search: rerunning the same command
        resumes the same study; changing the space or objective starts a new one."""
        key = json.dumps([sorted(space.fixed), sorted((k, repr(d)) for k, d in space.distributions.items()),
                          self.settings.selection, self.settings.directions, self.settings.sampler], sort_keys=True)
        return f"{self.config.tracking.experiment}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def _parent_params(self, space: SearchSpace) -> dict:
        params = {"sampler": self.settings.sampler, "pruner": self.settings.pruner, "n_trials": self.settings.n_trials,
                  "objectives": json.dumps(self.settings.selection), "directions": json.dumps(self.settings.directions),
                  "storage": self.storage_resolved, "fixed_overrides": json.dumps(space.fixed),
                  "sampler_options": json.dumps(self.settings.sampler_options or {}),
                  "stop_after": self.settings.stop_after,
                  "constraints": json.dumps([c.text for c in self.settings.limits])}
        return params | {f"space.{k}": repr(d) for k, d in space.distributions.items()}

    def _spawn_workers(self) -> list[subprocess.Popen]:
        """With the in-process launcher, n_jobs - 1 more processes running this same command on the
        same study (the storage URL reaches them in the environment, not on their command line)."""
        if self.settings.n_jobs <= 1 or not self.in_process:
            return []
        argv = [a for a in sys.argv if not a.startswith(("hydra.sweeper.storage=", "hydra.sweeper.n_jobs="))]
        cmd = [sys.executable, *argv, "hydra.sweeper.n_jobs=1", f"hydra.sweeper.study_name={self.study_name_resolved}"]
        log.info("starting %d more worker process(es)", self.settings.n_jobs - 1)
        return [subprocess.Popen(cmd) for _ in range(self.settings.n_jobs - 1)]

    def _run_trials(self, study: optuna.Study, space: SearchSpace, parent: str) -> None:
        batch_size = 1 if self.in_process else self.settings.n_jobs
        while True:
            done, running = len(settled_trials(study)), count(study, TrialState.RUNNING)
            if done >= self.settings.n_trials:
                return
            if self.settings.stop_after and controls.plateaued(study, self.settings.stop_after):
                log.info("no better value in the last %d completed trials (hydra.sweeper.stop_after): the study "
                         "stops after %d of %d trials", self.settings.stop_after, done, self.settings.n_trials)
                return
            failed = failures(study, since=self.first_trial)
            if failed >= self.settings.max_failures:
                raise SweepFailedError(
                    f"{failed} trials failed (hydra.sweeper.max_failures={self.settings.max_failures}); the sweep "
                    f"stops. See the FAILED runs' traceback.txt in MLflow, fix the cause, and rerun the same "
                    f"command to resume study {study.study_name!r}")
            if done + running >= self.settings.n_trials:
                time.sleep(POLL_SECONDS)  # the last trials are running in other workers (or their worker died)
                self._recover(study)
                continue
            batch = []
            for _ in range(min(batch_size, self.settings.n_trials - done - running)):
                trial = study.ask(space.distributions)
                trial.set_user_attr("worker", self.worker)
                if self._is_surplus(study, trial):
                    break
                batch.append(trial)
            if batch:
                self._run_batch(study, batch, space, parent)

    def _is_surplus(self, study: optuna.Study, trial: optuna.Trial) -> bool:
        """Two workers may ask at once for the last trial: the later one stands down."""
        earlier = [t for t in [*settled_trials(study), *study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                   if t.number < trial.number]
        if len(earlier) < self.settings.n_trials:
            return False
        trial.set_user_attr(SURPLUS, True)
        study.tell(trial, state=TrialState.FAIL)
        return True

    def _job_overrides(self, study: optuna.Study, trial: optuna.Trial, space: SearchSpace, parent: str) -> list[str]:
        return [*space.overrides(trial.params), f"tracking.sweep_id={study.study_name}",
                *trials.overrides(study.study_name, trial.number, parent, self.settings.selection,
                                  self.settings.pruner)]

    def _run_batch(self, study: optuna.Study, batch: list, space: SearchSpace, parent: str) -> None:
        """Hand the trials to the launcher at once (it runs them in parallel if it can), beating for
        them while they run."""
        jobs = [self._job_overrides(study, t, space, parent) for t in batch]
        with HeartbeatThread(study._storage, [t._trial_id for t in batch]):
            try:
                returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the jobs' runs are KILLED; retry the trials later
                for t in batch:
                    study.tell(t, state=TrialState.FAIL)
                    requeue(study, study.trials[t.number])
                log.error("interrupted: trial(s) %s queued again; rerun the same command to resume study %r",
                          [t.number for t in batch], study.study_name)
                raise
            except Exception as e:  # the launcher itself failed (e.g. a lost SLURM job)
                log.error("the launcher failed on trial(s) %s: %s: %s", [t.number for t in batch], type(e).__name__, e)
                for t in batch:
                    study.tell(t, state=TrialState.FAIL)
                return
        for t, ret in zip(batch, returns):
            self._tell(study, t, ret)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret) -> None:
        try:
            outcome = ret.return_value  # raises what the job raised, if it did not catch it
        except Exception as e:
            log.error("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            self._settle(study, trial, TrialState.FAIL)
            return
        if outcome.status == "FINISHED":
            missing = [o for o in self.settings.selection if o not in outcome.metrics]
            if missing:  # every trial would miss it: stop here rather than fail them all
                self._settle(study, trial, TrialState.FAIL)
                raise ConfigError(f"hydra.sweeper.objective: trial {trial.number}'s run has no metric {missing[0]!r} "
                                  f"(objectives are read on the development slice); it has "
                                  f"{', '.join(sorted(m for m in outcome.metrics if '/' in m))}")
            values = [outcome.metrics[o] for o in self.settings.selection]  # development scores only
            self._constrain(study, trial, outcome)
            self._settle(study, trial, TrialState.COMPLETE, values, outcome.run_id)
        else:
            self._settle(study, trial, TrialState.PRUNED if outcome.status == "PRUNED" else TrialState.FAIL)
            if outcome.retry:  # the tracking server was away for longer than tracking.outage_seconds
                requeue(study, study.trials[trial.number])
                log.warning("trial %d failed for want of the tracking server: queued again", trial.number)
                self._wait_for_tracking(study)

    def _wait_for_tracking(self, study: optuna.Study) -> None:
        """After a trial failed for want of the tracking server, the next waits for it here (the sweep's
        own allowance): past that the sweep stops (the trial stays queued), rather than fail and queue
        trial after trial against a server that is gone."""
        try:
            self.client.search_experiments(max_results=1)
        except TrackingUnavailable as e:
            raise SweepFailedError(f"{e}; rerun the same command to resume study {study.study_name!r}") from None

    def _close_parent_failed(self, parent: str) -> None:
        """The study's parent run FAILED, if the tracking server takes it (a sweep stopped for want of
        the server leaves it RUNNING: the next command that resumes the study reopens it)."""
        try:
            self.client.set_terminated(parent, "FAILED")
        except TrackingUnavailable as e:
            log.error("the study's parent run %s stays RUNNING: %s", parent, e)

    def _constrain(self, study: optuna.Study, trial: optuna.Trial, outcome) -> None:
        """The trial's constraint values (Optuna's samplers and best_trial rank infeasible trials
        last); a run that broke one is tagged with which, so reports pass it over too."""
        try:
            broken = controls.violations(self.settings.limits, outcome.metrics, trial.number)
        except ConfigError:
            self._settle(study, trial, TrialState.FAIL)
            raise
        for text, violation in broken.items():
            trial.set_constraint(text, violation)
        if any(v > 0 for v in broken.values()):
            self.client.set_tag(outcome.run_id, INFEASIBLE_TAG,
                                "; ".join(f"{text} (off by {v:g})" for text, v in broken.items() if v > 0))

    def _settle(self, study: optuna.Study, trial: optuna.Trial, state: TrialState, values=None,
                run_id: str | None = None) -> None:
        """Tell the study how `trial` ended, unless another worker has settled it meanwhile: this
        worker lost the study for longer than the grace period (a partition, a paused machine), so
        the trial was failed and queued again. Then the result is late: it is not counted, and
        its run is closed as superseded by the retry."""
        study.tell(trial, values, state=None if values else state, skip_if_finished=True)
        now = study._storage.get_trial(trial._trial_id)
        if now.state == state or run_id is None:
            return
        retry = next((t.number for t in study.get_trials(deepcopy=False)
                      if retried_trial(t) == trial.number), None)
        log.warning("trial %d finished after another worker had failed it as stale and queued it again (trial %s): "
                    "its result is not counted", trial.number, retry)
        study_runs.close_superseded_run(self.client, run_id, retry)

    def _recover(self, study: optuna.Study) -> None:
        """Fail and requeue the trials of dead workers: on this host by PID, anywhere by heartbeat;
        then close the MLflow runs of the trials this worker failed as KILLED."""
        before = retried(study.get_trials(deepcopy=False))
        recover_local_dead_trials(study)
        fail_stale(study)
        dead = sorted(retried(study.get_trials(deepcopy=False)) - before)
        if dead:
            log.info("%d trial(s) of a worker that died were failed and queued again: %s", len(dead), dead)
            study_runs.close_dead_runs(self.client, self.config.tracking.experiment, study.study_name, dead)

    def _finish(self, study: optuna.Study, space: SearchSpace, parent: str) -> None:
        """Every worker logs the outcome; the one that settled the last trial closes the parent run
        (or, when the study was already complete, whoever finds the parent still open)."""
        stand_down_queued_retries(study)
        states = {s.name.lower(): count(study, s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        log.info("study %r: %s", study.study_name, ", ".join(f"{n} {k}" for k, n in states.items()))
        best = study_runs.summary(study, self.settings.selection, space.overrides, self.client,
                                  self.config.tracking.experiment)
        last = last_settled(study)
        if last is None:
            return
        settled_by_me = last.user_attrs.get("worker") == self.worker
        left_open = last.number < self.first_trial and self.client.get_run(parent).info.status != "FINISHED"
        if settled_by_me or left_open:
            study_runs.close_parent(self.client, parent, study, self.settings.selection, best)
        if not states["complete"]:
            raise SweepFailedError(f"no trial of study {study.study_name!r} completed ({states['fail']} failed, "
                                   f"{states['pruned']} pruned): see the FAILED runs' traceback.txt in MLflow")
