"""The MLflow side of an Optuna study: one parent run per study, its trials' runs as children.

Several workers (processes, hosts) share a study, so the parent run is created exactly once: by
the worker whose `create_study` created the study (the storage's unique study name is the
compare-and-set), which records its id on the study; the others wait for that id. It is closed
once, by the worker that settled the study's last trial.
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
from mlflow.exceptions import MlflowException

from sweep.data.splits import test_metric
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import redact
from sweep.tracking.untrusted import equals
from sweep.vocabulary import (
    ERROR,
    METHOD,
    PARENT_ATTR,
    STUDY_METHOD,
    STUDY_NAME,
    SUPERSEDED_BY,
    SWEEP_ID,
    TRIAL_NUMBER,
    TRIAL_STATE,
    tag_field,
)

PARENT_WAIT_SECONDS = 60  # how long a worker waits for the study's creator to record the parent
log = logging.getLogger(__name__)


def create_parent(client: mlflow.MlflowClient, experiment_id: str, study_name: str, params: dict) -> str:
    run = client.create_run(experiment_id, run_name=f"study:{study_name}",
                            tags={STUDY_NAME: study_name, SWEEP_ID: study_name, METHOD: STUDY_METHOD})
    for k, v in params.items():
        client.log_param(run.info.run_id, k, redact(str(v))[:6000])
    return run.info.run_id


def parent_run(study: optuna.Study, created: bool, client: mlflow.MlflowClient, experiment_id: str,
               params: dict, unfinished: bool) -> str:
    """The study's parent run id: made here when this worker created the study, else read from the
    study (waiting for its creator to record it). Marked RUNNING again when trials remain."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id is None and not created:
        deadline = time.monotonic() + PARENT_WAIT_SECONDS
        while run_id is None and time.monotonic() < deadline:
            time.sleep(0.5)
            run_id = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs.get(PARENT_ATTR)
        if run_id is None:  # its creator died before recording one
            log.warning("study %r has no MLflow parent run after %d s; creating it", study.study_name,
                        PARENT_WAIT_SECONDS)
    if run_id is None:
        run_id = create_parent(client, experiment_id, study.study_name, params)
        study.set_user_attr(PARENT_ATTR, run_id)
    elif unfinished and client.get_run(run_id).info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")  # a resumed study
    return run_id


def close_dead_runs(client: mlflow.MlflowClient, experiment: str, study_name: str, numbers: list[int]) -> None:
    """The MLflow runs of trials whose worker died are left RUNNING: mark them KILLED. Two live
    workers may find the same dead run at once; the one whose write the store refuses (a tag the
    other just set: a unique-key violation on a database) leaves the run to the other."""
    exp = client.get_experiment_by_name(experiment)
    for n in numbers if exp else []:
        for run in client.search_runs([exp.experiment_id], f"{equals(tag_field(STUDY_NAME), study_name)} and "
                                      f"{equals(tag_field(TRIAL_NUMBER), n)} and attributes.status = 'RUNNING'"):
            try:
                client.set_tag(run.info.run_id, TRIAL_STATE, "FAIL")
                client.set_tag(run.info.run_id, ERROR, "its worker stopped (died or lost its host); the trial "
                                                         "was queued again")
                client.set_terminated(run.info.run_id, "KILLED")
            except MlflowException as e:
                log.info("run %s of dead trial %d: closed by another worker (%s)", run.info.run_id, n,
                         first_line(e))


def close_superseded_run(client: mlflow.MlflowClient, run_id: str, retry: int | None) -> None:
    """A trial's run that finished after its trial had been failed and queued again: KILLED, and
    tagged with the trial that ran its configuration again (whose run is the one that counts)."""
    client.set_tag(run_id, TRIAL_STATE, "FAIL")
    client.set_tag(run_id, SUPERSEDED_BY, str(retry))
    client.set_tag(run_id, ERROR, "finished after its worker had been taken for dead; the trial was queued again "
                                    f"as trial {retry}, whose run counts")
    client.set_terminated(run_id, "KILLED")


def best_trials(study: optuna.Study, n_objectives: int) -> list:
    """Single objective: the best trial (the first of any tie); several: the Pareto front."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    return [study.best_trial] if n_objectives == 1 else study.best_trials


def reproduce_command(overrides: list[str]) -> str:
    return redact(shlex.join(["python", "sweep.py", *overrides]))


def summary(study: optuna.Study, objectives: list[str], overrides_of, client: mlflow.MlflowClient,
            experiment: str) -> list[dict]:
    """The best trial(s) by their development scores, with the test scores their runs reported
    (read once the choice is made) and the command that re-runs each; logged."""
    out = []
    for t in best_trials(study, len(objectives)):
        values = dict(zip(objectives, t.values))
        test = test_scores(client, experiment, study.study_name, t.number, objectives)
        cmd = reproduce_command(overrides_of(t.params))
        out.append({"trial": t.number, "values": values, "test": test, "params": t.params, "command": cmd})
        log.info("best trial %d (by development score): %s; its test score: %s; params %s", t.number, values,
                 test or "not recorded", t.params)
        log.info("  reproduce: %s", cmd)
    return out


def test_scores(client: mlflow.MlflowClient, experiment: str, study_name: str, number: int,
                objectives: list[str]) -> dict[str, float]:
    """The test scores of a trial's finished MLflow run, for its development objectives."""
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id],
        f"{equals(tag_field(STUDY_NAME), study_name)} and {equals(tag_field(TRIAL_NUMBER), number)} and "
        "attributes.status = 'FINISHED'", max_results=1)
    metrics = runs[0].data.metrics if runs else {}
    tested = [test_metric(o) for o in objectives if o != test_metric(o)]
    return {m: metrics[m] for m in tested if m in metrics}


def close_parent(client: mlflow.MlflowClient, parent: str, study: optuna.Study, objectives: list[str],
                 best: list[dict]) -> None:
    """Best values, the best trials' commands, the study's plots; then FINISHED."""
    if len(best) == 1:
        for o, v in (best[0]["values"] | best[0]["test"]).items():
            client.log_metric(parent, f"best/{o}", v)  # best/dev/sst2/acc chose it; best/sst2/acc is its test score
    name = "best_trial.json" if len(objectives) == 1 else "pareto_front.json"
    client.log_text(parent, json.dumps(best, indent=1, default=str), name)
    log_plots(client, parent, study, objectives)
    client.set_terminated(parent, "FINISHED")


def log_plots(client: mlflow.MlflowClient, parent: str, study: optuna.Study, objectives: list[str]) -> None:
    """Optimization history, parameter importances and (multi-objective) the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    first = objectives[0]
    if len(objectives) == 1:
        plots = {"optimization_history": lambda: ovm.plot_optimization_history(study, target_name=first),
                 "param_importances": lambda: ovm.plot_param_importances(study, target_name=first)}
    else:
        plots = {"pareto_front": lambda: ovm.plot_pareto_front(study, target_names=objectives),
                 "param_importances": lambda: ovm.plot_param_importances(
                     study, target=lambda t: t.values[0], target_name=first)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, plot in plots.items():
            try:
                plot()
                plt.gcf().savefig(Path(tmp) / f"{name}.png", dpi=100, bbox_inches="tight")
                client.log_artifact(parent, str(Path(tmp) / f"{name}.png"), "plots")
            except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. too few trials
                log.warning("no %s plot: %s", name, e)
            finally:
                plt.close("all")
