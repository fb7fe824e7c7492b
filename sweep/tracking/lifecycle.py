"""A run's life: started with the tags that place it, ended FINISHED, FAILED (with its traceback) or
KILLED whatever stops it."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import traceback
from contextlib import contextmanager

import mlflow
from optuna.exceptions import TrialPruned

from sweep.config import PROJECT_ROOT
from sweep.runtime import processes
from sweep.runtime.distributed import world_size
from sweep.runtime.interrupts import atomic_write, interrupted, signals_received
from sweep.runtime.retry import first_line, retry
from sweep.runtime.secrets import redact
from sweep.tracking import outage
from sweep.tracking.outage import OUTAGE_SECONDS, sending_curves
from sweep.tracking.records import redacted, stored
from sweep.tracking.system_metrics import system_metrics
from sweep.vocabulary import GIT_COMMIT, GIT_DIRTY, SWEEP_ID, TRIAL_NUMBER, TRIAL_STATE, WORLD_SIZE

log = logging.getLogger(__name__)
CLOSE_SECONDS = 60.0   # how long ending an interrupted run waits for a store that does not answer (a user waits)
FAILED_SECONDS = 300.0  # how long ending a failed run waits (a server's restart, 10 s to a minute, and more)


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the project checkout; ('unknown', True) outside git."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True)
        return done.stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def _close(run, status: str, tags: dict[str, str], traceback_text: str | None = None,
           seconds: float = CLOSE_SECONDS) -> None:
    """End `run` with `status`, even when the interruption left the fluent client mid-call
    (a signal can land inside an MLflow write) or the store is briefly unavailable: a fresh
    client, retried for up to `seconds`."""
    with atomic_write():
        _close_now(run, status, tags, traceback_text, seconds)


def _close_now(run, status: str, tags: dict[str, str], traceback_text: str | None, seconds: float) -> None:
    """Tags, traceback and status, waiting up to `seconds` for a store that cannot be reached; a
    write the store refuses would be refused again, so it is not retried."""
    run_id = run.info.run_id

    def write() -> None:
        client = mlflow.MlflowClient()
        for k, v in redacted(tags).items():
            client.set_tag(run_id, k, v)
        if traceback_text:
            client.log_text(run_id, redact(traceback_text), "traceback.txt")
        client.set_terminated(run_id, status)

    try:
        retry(write, transient=outage.unreachable, seconds=seconds, who=outage.TRACKING,
              what=f"closing run {run_id} {status}", first=0.5, most=8.0)
    except Exception as e:
        log.error("run %s could not be recorded %s (%s); it stays RUNNING until a later run closes it KILLED",
                  run_id, status, first_line(e))
        raise
    finally:
        # MLflow's exit hook ends a run still on its stack with its default status, FINISHED: even a
        # failed one whose status could not be written. end_run takes the run off the stack first.
        if mlflow.active_run() and mlflow.active_run().info.run_id == run_id:
            with contextlib.suppress(Exception):
                mlflow.end_run(status)


@contextmanager
def mlflow_run(experiment_id: str, name: str, tags: dict[str, str], resume_run_id: str | None = None,
               system_metrics_interval: float | None = None, outage_seconds: float = OUTAGE_SECONDS):
    """An MLflow run that ends FINISHED, FAILED (with `traceback.txt`), or KILLED when
    interrupted (Ctrl-C, SIGTERM) or pruned by Optuna (tag `optuna.state=PRUNED`).
    `resume_run_id`: reopen that run (a job that continues where a killed one stopped).
    `system_metrics_interval`: seconds between samples of the machine (system/* curves); None: none.
    `outage_seconds`: how long the job trains on and waits for a tracking server that does not answer
    (outage.py: the curve is sent by a thread of its own and the run ends only once it is all sent)."""
    def start():
        if resume_run_id:
            return mlflow.start_run(run_id=resume_run_id, tags=redacted(tags), log_system_metrics=False)
        return mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=redacted(tags),
                                log_system_metrics=False)
    run = stored("starting the run", start, outage_seconds)
    in_trial = TRIAL_NUMBER in tags
    trial_failed = {TRIAL_STATE: "FAIL"} if in_trial else {}
    signals_before = signals_received()
    try:
        with system_metrics(run.info.run_id, system_metrics_interval), sending_curves(run.info.run_id, outage_seconds):
            yield run
    except TrialPruned:
        _close(run, "KILLED", {TRIAL_STATE: "PRUNED"})
        raise
    except BaseException as e:
        if interrupted(e, signals_before):  # (a user waiting on Ctrl-C: CLOSE_SECONDS at most)
            _close(run, "KILLED", {"error": "interrupted"} | trial_failed)
            raise
        _close(run, "FAILED", {"error": f"{type(e).__name__}: {e}"[:5000]} | trial_failed, traceback.format_exc(),
               seconds=FAILED_SECONDS)
        raise
    else:  # (a finished run holds its results: it waits as long as its writes did)
        _close(run, "FINISHED", {TRIAL_STATE: "COMPLETE"} if in_trial else {},
               seconds=max(FAILED_SECONDS, outage_seconds))


def start_tags(described: dict[str, str], sweep_id: str, user_tags: dict, trial_tags: dict[str, str]) -> dict[str, str]:
    """A run's tags as it starts: the user's (`tracking.tags`), its trial's, what the job is
    (`described`: method, stage, model, tasks, seed), its sweep, its code version and its process."""
    commit, dirty = git_state()
    extra = {str(k): str(v) for k, v in (user_tags or {}).items()}
    return extra | trial_tags | described | {
        SWEEP_ID: sweep_id,
        WORLD_SIZE: str(world_size()),  # training processes (DDP/FSDP/DeepSpeed); 1 without a launcher
        GIT_COMMIT: commit,
        GIT_DIRTY: str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    } | processes.owner_tags()
