"""The Optuna sweeper end to end on the tiny model: `python sweep.py -m hydra/sweeper=optuna ...`."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT, children, optuna_args, run_sweep, study_of

pytestmark = pytest.mark.e2e


def test_tpe_sweep_records_parent_and_child_runs(tmp_path, tracking):
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=4", "lora.r=choice(1,2,4)",
                               "train.lr=tag(log,interval(1e-4,1e-2))", "lora.alpha='${mul:2,${lora.r}}'"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    kids, [parent] = children(tracking)[0], children(tracking)[1].to_dict("records")
    assert len(kids) == 4 and (kids["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert sorted(kids["tags.optuna.trial_number"].astype(int)) == [0, 1, 2, 3]
    assert (kids["tags.optuna.state"] == "COMPLETE").all()
    assert (kids["params.lora.alpha"].astype(float) == 2 * kids["params.lora.r"].astype(float)).all()  # derived
    assert parent["status"] == "FINISHED" and parent["params.sampler"] == "tpe"
    assert parent["params.space.lora.r"].startswith("CategoricalDistribution")
    assert parent["metrics.best/dev/sst2/acc"] == study.best_value  # chosen on its development score,
    best_run = kids[kids["tags.optuna.trial_number"] == str(study.best_trial.number)].iloc[0]
    assert parent["metrics.best/sst2/acc"] == best_run["metrics.sst2/acc"]  # and its test score reported
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= files
    best = study.best_trial
    assert f"best trial {best.number}" in p.stdout and "reproduce: python sweep.py" in p.stdout
    assert f"lora.r={best.params['lora.r']}" in p.stdout.split("reproduce:")[1].splitlines()[0]


def test_an_enqueued_configuration_runs_first_a_broken_constraint_never_wins_and_a_plateau_stops_the_study(
        tmp_path, tracking):
    """hydra.sweeper.enqueue, constraints and stop_after on the tiny model (r=8 trains 7,168
    parameters, r=1 896): the enqueued r=8 is trial 0 and breaks the budget, so whatever it scores
    it is not the study's best; the study stops once a completed trial brings no better value."""
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=8", "lora.r=choice(1,8)",
                               "hydra.sweeper.enqueue=[{lora.r: 8}]", "hydra.sweeper.stop_after=1",
                               "hydra.sweeper.constraints=['trainable_params <= 3000']"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    study = study_of(tmp_path)
    first = study.trials[0]
    assert first.params == {"lora.r": 8} and first.user_attrs["enqueued"] is True
    assert first.constraints == {"trainable_params <= 3000": 7168 - 3000}
    assert study.best_trial.params == {"lora.r": 1}
    assert len(study.trials) < 8 and "(hydra.sweeper.stop_after): the study stops after" in p.stdout + p.stderr
    kids, [parent] = children(tracking)[0], children(tracking)[1].to_dict("records")
    infeasible = kids.set_index("tags.optuna.trial_number")["tags.optuna.infeasible"]
    assert infeasible["0"] == "trainable_params <= 3000 (off by 4168)"
    best = json.loads(mlflow.artifacts.load_text(f"runs:/{parent['run_id']}/best_trial.json"))
    assert best[0]["params"] == {"lora.r": 1} and parent["params.stop_after"] == "1"


@pytest.mark.parametrize("sampler", ["qmc", "cmaes"])
def test_qmc_and_cmaes_sweep_the_tiny_model_with_their_own_settings(tmp_path, tracking, sampler):
    """hydra.sweeper.sampler=qmc|cmaes with sampler_options, as a user sweeps: QMC's learning rates after
    the first trial (which fixes the space) are the unscrambled Sobol points 0, 1/2, 3/4 of the interval;
    CMA-ES samples the trial after its one start-up trial from its own search (a generation recorded)."""
    options = {"qmc": "{qmc_type: sobol, scramble: false}", "cmaes": "{n_startup_trials: 1}"}[sampler]
    n = {"qmc": 3, "cmaes": 2}[sampler]
    p = run_sweep(*optuna_args(tmp_path, f"hydra.sweeper.n_trials={n}", f"hydra.sweeper.sampler={sampler}",
                               f"hydra.sweeper.sampler_options={options}", "train.lr=interval(0.001,0.003)",
                               "lora.dropout=interval(0,0.1)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    if sampler == "qmc":
        assert [t.params["train.lr"] for t in trials[1:]] == pytest.approx([0.001, 0.002])
    else:
        assert [t.system_attrs.get("cma:generation") is not None for t in trials] == [False, True]
    kids, [parent] = children(tracking)[0], children(tracking)[1].to_dict("records")
    assert parent["params.sampler"] == sampler and len(kids) == n
    logged = sorted(kids["params.train.lr"].astype(float))
    assert logged == pytest.approx(sorted(t.params["train.lr"] for t in trials))  # each trial ran its values


def test_two_objectives_give_a_pareto_front(tmp_path, tracking):
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler=nsgaii",
                               "hydra.sweeper.objective=[sst2/acc,trainable_params]",
                               "hydra.sweeper.directions=[maximize,minimize]", "lora.r=choice(1,4)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    study = study_of(tmp_path)
    assert len(study.directions) == 2 and len(study.best_trials) >= 1
    [parent] = children(tracking)[1].to_dict("records")
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"])}
    assert "pareto_front.json" in files
    # The comparison report draws the study's Pareto front from the MLflow runs alone.
    from analysis import report

    assert report.main(["--experiment", "sft-sweep", "--tracking-uri", tracking[0].split("=", 1)[1],
                        "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "optuna_study_study__pareto_front.png").stat().st_size > 10_000


# (the in-process launcher attaches its jobs to their trials the same way: the other tests sweep with it)
@pytest.mark.parametrize("launcher", [["hydra/launcher=slurm_local", "hydra.sweeper.n_jobs=2"],
                                      ["hydra/launcher=processes", "hydra.sweeper.n_jobs=2"],
                                      ["hydra/launcher=fresh_process"]],
                         ids=["submitit-local", "joblib", "fresh-process"])
def test_a_diverging_trial_is_pruned_early(tmp_path, tracking, launcher):
    """Also through launchers that run each job in a process of its own: the job re-attaches to its
    trial from the `trial.*` overrides and the storage in the environment."""
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=grid",
                               "hydra.sweeper.pruner=median", "eval.every_steps=2", "eval.slice_size=4",
                               "train.max_steps=8", "train.logging_steps=1", "train.warmup_ratio=0",
                               "train.lr=choice(1e30,1e-3)", f"hydra.sweep.dir={tmp_path}/multirun", *launcher),
                  *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    by_lr = {t.params["train.lr"]: t for t in study_of(tmp_path).trials}
    assert by_lr[1e30].state == TrialState.PRUNED and by_lr[1e-3].state == TrialState.COMPLETE
    assert by_lr[1e-3].intermediate_values  # reported by the job to its trial, in whatever process it ran
    assert "Sweep study" in p.stdout and "lora-r8-a16-qkvo" in p.stdout  # the end-of-sweep table
    if "hydra/launcher=fresh_process" in launcher:  # one fork server for both trials' launches
        assert (p.stdout + p.stderr).count("fork server (pid") == 1, p.stdout[-3000:]
    kids, [parent] = children(tracking)[0], children(tracking)[1].to_dict("records")
    assert set(kids["tags.mlflow.parentRunId"]) == {parent["run_id"]} and parent["status"] == "FINISHED"
    pruned = kids[kids["tags.optuna.state"] == "PRUNED"].iloc[0]
    assert pruned["status"] == "KILLED"
    losses = mlflow.MlflowClient().get_metric_history(pruned["run_id"], "train/loss")
    assert max(h.step for h in losses) < 8  # stopped early; its partial curve is kept


def test_a_killed_sweep_resumes_to_exactly_n_trials(tmp_path, tracking):
    """A sweep SIGKILLed during its second trial, then run again with the same command: exactly n_trials
    COMPLETE. Slow because the killed sweep is a new interpreter, and the resumed one runs the rest."""
    args = optuna_args(tmp_path, "hydra.sweeper.n_trials=3", "lora.r=choice(1,2,4,8)", "train.max_steps=6")
    proc = subprocess.Popen([sys.executable, "sweep.py", *args, *tracking], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it while its second trial runs
        time.sleep(0.5)
        try:
            trials = study_of(tmp_path).trials
        except KeyError:
            continue
        if len(trials) >= 2 and trials[1].state == TrialState.RUNNING:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = study_of(tmp_path).trials
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING

    p = run_sweep(*args, *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1 trial(s) of a worker that died were failed and queued again: [1]" in p.stdout
    after = study_of(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    assert after[1].state == TrialState.FAIL
    retry = [t for t in after if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == after[1].params and retry[0].state == TrialState.COMPLETE
    assert after[0].params == before[0].params  # the finished trial was not rerun
    kids = children(tracking)[0]
    assert (kids["tags.optuna.state"] == "COMPLETE").sum() == 3
    dead = kids[kids["tags.optuna.trial_number"] == "1"]
    assert len(dead) <= 1 and (dead["status"] == "KILLED").all()  # its run (if it had started) is closed
    assert not (kids["status"] == "RUNNING").any()


def test_too_many_failures_stop_the_sweep(tmp_path, tracking):
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=5", "hydra.sweeper.max_failures=2",
                               "train.max_steps=4", "train.logging_steps=1", "train.warmup_ratio=0",
                               "train.lr=1e30", "lora.r=choice(1,2)"), *tracking)
    assert p.returncode != 0
    assert "2 trials failed (hydra.sweeper.max_failures=2); the sweep stops" in p.stderr
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    kids = children(tracking)[0]
    assert (kids["status"] == "FAILED").sum() == 2 and (kids["tags.optuna.state"] == "FAIL").all()


def test_an_objective_no_run_logs_stops_after_the_first_trial(tmp_path, tracking):
    """An objective no run logs stops the sweep after the first trial with one line (exit 2), and a
    sweep whose every trial fails exits 1 (before: each trial failed in turn and the sweep exited 0)."""
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.objective=sst2/nope",
                               "lora.r=choice(1,2)"), *tracking)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(
        "error: hydra.sweeper.objective: trial 0's run has no metric 'dev/sst2/nope'"), p.stderr[-2000:]
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.FAIL]
    assert set(children(tracking)[1]["status"]) == {"FAILED"}  # the parent run
    p = run_sweep(*optuna_args(tmp_path / "all-fail", "hydra.sweeper.n_trials=2", "debug.fail_at_step=1",
                               "lora.r=choice(1,2)"), *tracking)
    assert p.returncode == 1 and "error: no trial of study 'study' completed (2 failed, 0 pruned)" in p.stderr, \
        p.stderr[-2000:]


def test_a_sweep_chooses_on_development_scores_whatever_its_test_examples_hold(tmp_path):
    """Nothing a sweep chooses reads a test score: a study whose test examples all have the wrong
    label (read, they would reverse every ranking) prunes, values and chooses exactly as one whose
    test examples are right; each trial's value is its run's dev/<task>/<metric>."""
    import json
    import shutil

    outcomes = {}
    for name, flip in (("right", False), ("reversed", True)):
        data = tmp_path / name / "data" / "sst2"
        data.mkdir(parents=True)
        for split in ("train", "dev"):
            (data / f"{split}.jsonl").symlink_to(ROOT / "data" / "sst2" / f"{split}.jsonl")
        with (ROOT / "data" / "sst2" / "validation.jsonl").open() as f:
            rows = [json.loads(line) for line in f]
        (data / "validation.jsonl").write_text("".join(
            json.dumps({**r, "label": 1 - r["label"] if flip else r["label"]}) + "\n" for r in rows))
        store = tmp_path / name
        tracking = [f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.artifact_location={store}/artifacts"]
        p = run_sweep(*optuna_args(store, "hydra.sweeper.n_trials=4", "lora.r=choice(1,2,4,8)", "train.max_steps=4",
                                   "train.lr=tag(log,interval(1e-3,1e-1))", "hydra.sweeper.pruner=median",
                                   "eval.every_steps=2", "eval.slice_size=8", "data.dev_size=24",
                                   f"paths.data={store / 'data'}"), *tracking)
        assert p.returncode == 0, p.stderr[-3000:]
        study, runs = study_of(store), children(tracking)[0]
        for t in study.trials:
            if t.state == TrialState.COMPLETE:
                run = runs[runs["tags.optuna.trial_number"] == str(t.number)].iloc[0]
                assert t.value == run["metrics.dev/sst2/acc"]  # the trial's value is its development score
        outcomes[name] = ([(t.params, t.state, t.value, t.intermediate_values) for t in study.trials],
                          study.best_trial.number, sorted(runs["metrics.sst2/acc"].dropna()))
        shutil.rmtree(data.parent)
    right, reversed_ = outcomes["right"], outcomes["reversed"]
    assert right[:2] == reversed_[:2]  # the same trials, states, values, pruning and best trial
    assert right[2] != reversed_[2]    # while the test scores they report differ
