"""`make upload RUN=<run id> [STORAGE=<url>]` (`python -m sweep.ops.upload RUN_ID`): upload an
adapter whose upload failed (a full or unwritable artifact store) from where the job kept it on this
machine, tag its sha256, end the run FINISHED, and remove the local copy. The folder is this
checkout's `paths.pending`/<run id>, never a path read from the store (a store is untrusted: a path
there could name any file).

A trial's run: its trial failed when the adapter could not be stored (a study never counts a trial
COMPLETE without its adapter). Once stored, the study counts it: Optuna cannot turn a failed trial
into a complete one, so a COMPLETE copy is added (same parameters, the run's objective values from
its development scores, `retry_of` the failed one, which then no longer counts towards n_trials) and
the run is re-tagged to the copy. The study is the one in `--storage` (default: $OPTUNA_STORAGE, else
the sweeper's default journal)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import mlflow

from sweep.config import RUN_ID, ConfigError, compose_config
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import guard_output
from sweep.study.storage import JOURNAL, STORAGE_ENV, storage_url
from sweep.tracking.records import AdapterNotStored, pending_folder, upload_adapter
from sweep.tracking.reuse import client, run_by_id
from sweep.vocabulary import (
    ADAPTER_UPLOAD_ERROR,
    ADAPTER_UPLOADED_LATER,
    ADAPTER_WEIGHTS,
    ERROR,
    STUDY_NAME,
    TRIAL_NUMBER,
    TRIAL_STATE,
    UPLOADED_LATER_ATTR,
    retried_trial,
    retry_attrs,
)

log = logging.getLogger(__name__)


def upload(run_id: str, tracking_uri: str, pending_root: Path, storage: str | None = None) -> Path:
    """Upload the run's pending adapter, end the run FINISHED and have its study (in `storage`) count
    its trial; the folder the adapter came from. Everything is checked before anything is written."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{run_id!r} is not an MLflow run id (32 hex digits)")
    folder = pending_folder(pending_root, run_id)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"no adapter waits for run {run_id} in {folder}: nothing to upload")
    store = client(tracking_uri)
    run = run_by_id(store, run_id, "RUN", tracking_uri)  # (refused in one line when the store has no such run)
    error = run.data.tags.get(ERROR, "")
    waited = run.info.status == "FAILED" and error.startswith(AdapterNotStored.__name__)  # (failed for this only)
    if not waited:
        raise ConfigError(f"run {run_id} is {run.info.status.lower()} and did not fail for want of its adapter: only "
                          f"such a run is completed by an upload (its stored adapter and hash stay as they are)")
    trial = waiting_trial(run, storage) if waited and STUDY_NAME in run.data.tags else None
    mlflow.set_tracking_uri(tracking_uri)
    upload_adapter(folder, run_id)
    store.set_tag(run_id, ADAPTER_UPLOADED_LATER, "true")
    if trial is not None:
        store.set_tag(run_id, TRIAL_NUMBER, str(count_trial(*trial, run_id)))
        store.set_tag(run_id, TRIAL_STATE, "COMPLETE")
    store.set_tag(run_id, ADAPTER_UPLOAD_ERROR, error)
    store.delete_tag(run_id, ERROR)
    store.set_terminated(run_id, "FINISHED")
    shutil.rmtree(folder.parent)
    return folder


def waiting_trial(run, storage: str | None):
    """(study, the run's failed trial, the run's objective values), checked: the trial failed for want
    of its adapter and was not run again."""
    import optuna
    from optuna.trial import TrialState

    from sweep.study.storage import make_storage

    tags, run_id = run.data.tags, run.info.run_id
    name, number = tags[STUDY_NAME], tags.get(TRIAL_NUMBER, "")
    if not storage:
        raise ConfigError(f"run {run_id} is trial {number} of study {name!r}: give the study's storage "
                          "(STORAGE=<url>, or $OPTUNA_STORAGE) so that the trial is counted")
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(storage))
    except KeyError:
        raise ConfigError(f"run {run_id} is a trial of study {name!r}, which the storage does not hold; "
                          "give the storage it ran in (STORAGE=<url>)") from None
    trials = study.get_trials(deepcopy=False)
    failed = trials[int(number)] if number.isdigit() and int(number) < len(trials) else None
    retried = failed is not None and any(retried_trial(t) == failed.number and
                                         t.user_attrs.get(UPLOADED_LATER_ATTR) != run_id for t in trials)
    if failed is None or failed.state != TrialState.FAIL or retried:
        raise ConfigError(f"run {run_id}: its trial {number!r} of study {name!r} is not a failed trial waiting "
                          "for its adapter; the store or the study was changed")
    values = objective_values(run)
    if len(values) != len(study.directions):
        raise ConfigError(f"run {run_id}: {len(values)} objective values for a study of {len(study.directions)}")
    return study, failed, values


def count_trial(study, failed, values: list[float], run_id: str) -> int:
    """Add the COMPLETE copy of the failed trial (once: a second upload finds it); its number."""
    import optuna

    def copy():
        return next((t.number for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get(UPLOADED_LATER_ATTR) == run_id), None)
    if copy() is None:
        study.add_trial(optuna.trial.create_trial(
            params=failed.params, distributions=failed.distributions, values=values,
            user_attrs={**failed.user_attrs, **retry_attrs(failed.number), UPLOADED_LATER_ATTR: run_id}))
        log.info("trial %d of study %r counted as trial %d, COMPLETE now that its adapter is stored",
                 failed.number, study.study_name, copy())
    return copy()


def objective_values(run) -> list[float]:
    """The run's development scores the study was optimising (its recorded `trial.objectives`)."""
    try:
        objectives = json.loads(run.data.params.get("trial.objectives", ""))
    except ValueError:
        objectives = None
    if not (isinstance(objectives, list) and objectives and all(isinstance(o, str) for o in objectives)
            and all(o in run.data.metrics for o in objectives)):
        raise ConfigError(f"run {run.info.run_id}: its recorded trial.objectives are not metrics it logged; "
                          "the store was changed")
    return [float(run.data.metrics[o]) for o in objectives]


def main(argv: list[str] | None = None) -> int:
    guard_output()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m sweep.ops.upload", description=__doc__.split("\n\n")[0])
    p.add_argument("run_id")
    add_tracking_uri(p)
    p.add_argument("--pending", help="where the job kept the adapter (its paths.pending; default: this checkout's)")
    p.add_argument("--storage", help=f"a trial's study storage (default: ${STORAGE_ENV}, else the sweeper's journal)")
    a = p.parse_args(argv)
    paths = compose_config().paths
    pending, journal = Path(a.pending or paths.pending), Path(paths.root) / JOURNAL
    storage = storage_url(a.storage, str(journal) if journal.exists() else "")
    try:
        folder = upload(a.run_id, a.tracking_uri, pending, storage or None)
    except ConfigError as e:
        return refuse(e)
    except (OSError, mlflow.exceptions.MlflowException) as e:
        return refuse(f"the upload failed again ({first_line(e)}); the adapter stays in "
                      f"{pending_folder(pending, a.run_id)}", code=1)
    log.info("uploaded the adapter of run %s from %s", a.run_id, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
