"""`make check-store` (`python -m sweep.ops.integrity`): is a tracking store, and the study
beside it, whole?

Checks, one line per violation (exit 1 if any, 0 when whole, 2 for bad input):
- every FINISHED run's declared files (each tag `*_sha256` names one) are there and hash to it;
- every run a run points at (`parent_run_id`, `judge_run_id`, `mlflow.parentRunId`) exists;
- no run is RUNNING whose owner is gone (checkable for this host's processes) or whose trial has
  ended;
- with `--storage`: every COMPLETE trial has exactly one FINISHED run, and no FINISHED run counts
  for a trial that is not COMPLETE.

Why our own: MLflow and Optuna each keep their own store consistent, but nothing checks the
contract between them that a sweep relies on (a trial's value comes from its run's metrics and
adapter), nor that a shared store's files still match what their runs recorded.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from sweep.config import RUN_ID, ConfigError
from sweep.runtime import processes
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.secrets import guard_output
from sweep.stages.lineage import check_adapter, verified_adapter
from sweep.tracking import reuse
from sweep.tracking.untrusted import printable
from sweep.vocabulary import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_SHA_TAG,
    GENERATED_DIR,
    GENERATED_SHA_TAG,
    GENERATED_TASKS,
    HOST,
    JUDGE_TAG,
    METHOD,
    OLD_ADAPTER_SHA_TAG,
    PARENT_TAG,
    PID,
    REFERENCE_REPLIES,
    REFERENCE_SHA_TAG,
    RESULTS,
    RESULTS_HASH_TAG,
    SCORES,
    SCORES_HASH_TAG,
    STUDY_METHOD,
    STUDY_NAME,
    TRIAL_NUMBER,
)

# The files a run declares by a hash tag: tag -> artifact path.
DECLARED = {RESULTS_HASH_TAG: RESULTS, SCORES_HASH_TAG: SCORES, REFERENCE_SHA_TAG: REFERENCE_REPLIES,
            GENERATED_SHA_TAG: f"{GENERATED_DIR}/{GENERATED_TASKS}"}
LINKS = (PARENT_TAG, JUDGE_TAG, "mlflow.parentRunId")
log = logging.getLogger(__name__)
VIOLATIONS = logging.getLogger(f"{__name__}.violations")  # what the command finds (its stdout)


@dataclass
class Violation:
    run_or_trial: str
    problem: str

    def __str__(self) -> str:
        return printable(f"{self.run_or_trial}: {self.problem}")


def check_runs(store: mlflow.MlflowClient, runs: list) -> list[Violation]:
    """The files, links and owners of `runs` (one store's)."""
    found, ids = [], {r.info.run_id for r in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            rid, tags = run.info.run_id, run.data.tags
            if run.info.status == "FINISHED":
                for tag, artifact in DECLARED.items():
                    if tag in tags and reuse.verified_copy(store, rid, artifact, tags[tag], Path(tmp) / str(i)) is None:
                        found.append(Violation(f"run {rid}", f"{artifact} is missing or does not hash to its {tag}"))
                    shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)  # (each download gone once hashed)
                found += adapter_violations(store, run, Path(tmp) / str(i))
            for link in LINKS:
                target = tags.get(link)
                if target is not None and target not in ids and not _exists(store, target):
                    found.append(Violation(f"run {rid}", f"{link}={target!r} names no run in this store"))
            if run.info.status == "RUNNING" and processes.owner_gone(tags):
                found.append(Violation(f"run {rid}", f"RUNNING, but its process (host {tags.get(HOST)}, pid "
                                                     f"{tags.get(PID)}) is gone"))
    return found


def adapter_violations(store: mlflow.MlflowClient, run, tmp: Path) -> list[Violation]:
    """A finished run's adapter, checked whole (its manifest, config and weights) against its tag; a
    run that trained an adapter (its method and `tracking.log_adapter`) and records none is a
    violation too, as is one whose config was never hashed (recorded before manifests)."""
    rid, tags, params = run.info.run_id, run.data.tags, run.data.params
    if ADAPTER_SHA_TAG in tags:
        try:
            if not verified_adapter(store, rid, tags[ADAPTER_SHA_TAG], tmp):
                return [Violation(f"run {rid}", f"{ADAPTER_DIR}/ does not match its {ADAPTER_SHA_TAG} "
                                                "(a file missing, added to the manifest, or changed)")]
            check_adapter("adapter of run", rid, tmp, None)  # (what loading it would refuse)
        except ConfigError as e:
            return [Violation(f"run {rid}", str(e).split(": ", 1)[-1])]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # (each download gone once hashed)
        return []
    if OLD_ADAPTER_SHA_TAG in tags:
        return [Violation(f"run {rid}", f"its adapter was recorded with only its weights hashed "
                                        f"({OLD_ADAPTER_SHA_TAG}): {ADAPTER_CONFIG} cannot be checked")]
    peft, trains = params.get("method.peft"), params.get("method.trains") == "True"
    if trains and peft not in (None, "None", "null", "") and params.get("tracking.log_adapter", "True") == "True":
        return [Violation(f"run {rid}", f"trained an adapter (method.peft={printable(peft)}) and "
                                        "records none")]
    return []


def _exists(store: mlflow.MlflowClient, run_id: str) -> bool:
    if not RUN_ID.fullmatch(str(run_id)):
        return False
    try:
        return store.get_run(run_id).info.lifecycle_stage == "active"  # (a deleted run is gone to its readers)
    except mlflow.exceptions.MlflowException:
        return False


def check_studies(storage_url: str, runs: list) -> list[Violation]:
    """Every study in the storage against the runs tagged with its name."""
    import optuna
    from optuna.trial import TrialState

    from sweep.study.storage import make_storage

    storage = make_storage(storage_url)
    found = []
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    numbers = {}
    for summary in summaries:
        name = summary.study_name
        mine = [r for r in runs if r.data.tags.get(STUDY_NAME) == name]
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        numbers[name] = {str(t.number) for t in trials}
        for t in trials:
            of_trial = [r for r in mine if r.data.tags.get(TRIAL_NUMBER) == str(t.number)]
            finished = [r for r in of_trial if r.info.status == "FINISHED"]
            where = f"study {name!r} trial {t.number}"
            if t.state == TrialState.COMPLETE and len(finished) != 1:
                found.append(Violation(where, f"COMPLETE with {len(finished)} FINISHED runs (one expected)"))
            elif t.state != TrialState.COMPLETE and finished and t.state != TrialState.RUNNING:
                found.append(Violation(where, f"{t.state.name}, yet run {finished[0].info.run_id} is FINISHED"))
            if t.state != TrialState.RUNNING:
                for r in of_trial:
                    if r.info.status == "RUNNING":
                        found.append(Violation(f"run {r.info.run_id}", f"RUNNING, but {where} is {t.state.name}"))
    for r in runs:  # (a run names a study or trial the storage does not hold: store text, shown, never used)
        name, number = r.data.tags.get(STUDY_NAME), r.data.tags.get(TRIAL_NUMBER)
        if name is None or r.data.tags.get(METHOD) == STUDY_METHOD:
            continue
        if name not in numbers:
            found.append(Violation(f"run {r.info.run_id}", f"tagged with study {name[:100]!r}, which the storage "
                                                           "does not hold"))
        elif number is not None and number not in numbers[name]:
            found.append(Violation(f"run {r.info.run_id}", f"tagged with trial {number[:20]!r} of study "
                                                           f"{name[:100]!r}, which has no such trial"))
    return found


def check_store(tracking_uri: str, storage_url: str | None = None) -> list[Violation]:
    store = reuse.client(tracking_uri)
    runs = [r for e in store.search_experiments() for r in store.search_runs([e.experiment_id], max_results=50000)]
    found = check_runs(store, runs)
    if storage_url:
        found += check_studies(storage_url, runs)
    log.info("checked %d runs%s: %d violation(s)", len(runs), " and the studies" if storage_url else "", len(found))
    return found


def main(argv: list[str] | None = None) -> int:
    from sweep.study.storage import STORAGE_ENV

    guard_output()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m sweep.ops.integrity", description=__doc__.split("\n\n")[0])
    add_tracking_uri(p)
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"the study storage to check against the runs (default: ${STORAGE_ENV}, if set)")
    a = p.parse_args(argv)
    try:
        found = check_store(a.tracking_uri, a.storage)
    except ConfigError as e:
        return refuse(e)
    if not VIOLATIONS.handlers:  # (the command's output, one line per violation: on stdout)
        report = logging.StreamHandler(sys.stdout)
        report.setFormatter(logging.Formatter("%(message)s"))
        VIOLATIONS.addHandler(report)
        VIOLATIONS.propagate = False
    for v in found:
        VIOLATIONS.error("%s", v)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
