"""Faults a team's servers and workers meet, injected for real (docs/reliability.md): all at once
in one sweep (the chaos test), and each on its own: the study database restarting, a worker that
is cut off from both servers for longer than the grace period and comes back, the tracking server down past
MLflow's retries, past a job's allowance, or while a failure is recorded, a live run in another
PID namespace. Nothing is simulated by a flag in the code under test: servers are stopped and
started, network paths cut, processes killed with signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import mlflow
import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from scripts import services as servers
from sweep.study.storage import fail_stale, make_storage
from sweep.vocabulary import STUDY_METHOD, retried_trial
from tests.conftest import ROOT, TINY, clean_env, signed_in
from tests.test_team import CAN_SET_HOSTNAME, start_worker, ui_lands_on_the_runs_with_their_datasets, wait_for

pytestmark = pytest.mark.e2e
HEARTBEAT, GRACE = 1, 8  # seconds: a worker silent for GRACE is taken for dead
# MLflow's client retries end at once (its backoff doubles to half a minute and more): the workers' own
# waits (sweep/runtime/retry.py, at most 10 s apart) take over, so an outage outlasts MLflow's retries
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


@pytest.fixture(scope="module")
def team():
    """The team's servers of this file's own (their restarts must not reach other tests):
    (folder, environment)."""
    with servers.throwaway_root("sft-sweep-faults-") as root, signed_in(servers.read_env(root)):
        yield root, servers.read_env(root)


def sweep_args(study_name: str, experiment: str, n_trials: int, steps: int) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", *TINY, f"train.max_steps={steps}", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.study_name={study_name}", f"hydra.sweeper.heartbeat_interval={HEARTBEAT}",
            f"hydra.sweeper.grace_period={GRACE}", "train.lr=tag(log,interval(1e-4,1e-2))", "lora.r=choice(1,2,4)",
            f"tracking.experiment={experiment}"]


def load_study(env: dict, study_name: str) -> optuna.Study:
    storage = make_storage(env["OPTUNA_STORAGE"])
    return wait_for(lambda: optuna.load_study(study_name=study_name, storage=storage)
                    if study_name in optuna.get_all_study_names(storage) else None, 180, "the study")


def training_trial(study: optuna.Study, experiment: str, worker: subprocess.Popen | None = None):
    """A RUNNING trial (of `worker`, if given) whose run has logged a training loss."""
    client = mlflow.MlflowClient()
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        if worker and not t.user_attrs.get("worker", "").endswith(f":{worker.pid}"):
            continue
        runs = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.`optuna.trial_number` = "
                                  f"'{t.number}' and attributes.status = 'RUNNING'")
        if not runs.empty and client.get_metric_history(runs.iloc[0]["run_id"], "train/loss"):
            return t


def assert_whole(study: optuna.Study, experiment: str, n_trials: int):
    """Exactly `n_trials` COMPLETE trials, each with exactly one FINISHED run; nothing RUNNING."""
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert "RUNNING" not in set(runs["status"])
    kids = runs[runs["tags.method"] != STUDY_METHOD]
    for t in complete:
        mine = kids[(kids["tags.optuna.trial_number"] == str(t.number)) & (kids["status"] == "FINISHED")]
        assert len(mine) == 1, (t.number, kids[["tags.optuna.trial_number", "status"]].to_dict("records"))
    return trials, kids


def store_is_whole(env: dict) -> None:
    """`make check-store`'s check against the team's servers finds nothing wrong (called here: the
    command itself is test_reliability.py's)."""
    from sweep.ops.integrity import check_store

    assert check_store(env["MLFLOW_TRACKING_URI"], env["OPTUNA_STORAGE"]) == []


def outage(root, seconds: float) -> None:
    """The tracking server stopped for `seconds`, then started again."""
    servers.stop_mlflow(root)
    time.sleep(seconds)
    servers.start_mlflow(root, servers.pg_port(root), servers.mlflow_port(root))


def test_chaos_three_hosts_survive_a_tracking_outage_a_database_restart_and_a_dead_worker(team, tmp_path):
    """The team's sweep under every server fault at once: three workers with host names of their
    own, six trials; mid-sweep the tracking server is stopped for 10 s and started again, one
    worker is SIGKILLed while it trains, and PostgreSQL is stopped for longer than the grace
    period and started again. At the end: exactly six COMPLETE trials, each with one FINISHED run
    holding its metrics and a downloadable adapter served by the tracking server, no trial taken for
    dead but the killed worker's, that one run again with its parameters, its run KILLED, one
    FINISHED study parent, three distinct first configurations, no password in a log or on a
    command line, `make check-store` clean, and the MLflow UI's link landing on the runs with their
    datasets. MLflow's client retries are off (NO_RETRIES): the workers' own waits meet every fault. (Before: the survivors died on their next storage call after the restart, their
    finished trials untold.) It is also the team test (three hosts, one study, one dies): one
    sweep proves both, since every fault of a team's day meets the same workers."""
    root, env = team
    experiment, study_name, n = f"chaos-{uuid.uuid4().hex[:6]}", f"chaos-{uuid.uuid4().hex[:6]}", 6
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    hosts = ["w0", "w1", "w2"] if CAN_SET_HOSTNAME else ["local"] * 3
    args = sweep_args(study_name, experiment, n, steps=30)
    workers = [start_worker(h, [*args, f"hydra.sweep.dir={tmp_path}/{i}"], clean_env() | env | NO_RETRIES,
                            tmp_path / f"w{i}.log") for i, h in enumerate(hosts)]
    study = load_study(env, study_name)
    command_lines = [open(f"/proc/{w.pid}/cmdline").read() for w in workers]
    wait_for(lambda: training_trial(study, experiment), 240, "a trial to train")
    outage(root, 10)
    victim = wait_for(lambda: training_trial(study, experiment, workers[1]), 300, "worker 1 to train a trial")
    os.killpg(workers[1].pid, signal.SIGKILL)
    servers.stop_postgres(root)
    time.sleep(GRACE + 4)
    servers.start_postgres(root, servers.pg_port(root))
    for i in (0, 2):
        assert workers[i].wait(timeout=900) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    trials, kids = assert_whole(study, experiment, n)
    assert [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")] == [
        victim.number]
    [retry] = [t for t in trials if retried_trial(t) == victim.number]  # the dead worker's trial, run again
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert len({tuple(sorted(t.params.items())) for t in trials[:3]}) == 3  # three asking at once: three configurations
    assert len({t.user_attrs["worker"].split(":")[0] for t in trials}) == len(set(hosts))
    runs = mlflow.search_runs(experiment_names=[experiment])
    [parent] = runs[runs["tags.method"] == STUDY_METHOD].to_dict("records")
    assert parent["status"] == "FINISHED" and set(kids["tags.mlflow.parentRunId"]) == {parent["run_id"]}
    [killed] = kids[kids["tags.optuna.trial_number"] == str(victim.number)].to_dict("records")
    assert killed["status"] == "KILLED"
    done = kids[kids["status"] == "FINISHED"]
    for run_id in done["run_id"]:
        assert mlflow.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")  # served, not a local path
        adapter = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter",
                                                      dst_path=str(tmp_path / run_id))
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
        assert "dev/sst2/acc" in mlflow.get_run(run_id).data.metrics
    password = urlsplit(env["OPTUNA_STORAGE"]).password
    assert password not in " ".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert not any(password in line for line in command_lines)  # nor a command line (`ps`)
    store_is_whole(env)
    ui_lands_on_the_runs_with_their_datasets(tmp_path, (tmp_path / "w0.log").read_text(), done, study_name)


def test_storage_calls_wait_for_the_database_and_nobody_is_taken_for_dead_after_it(team):
    """Calls made while PostgreSQL is down wait for it and then succeed (before: StorageInternalError
    at once); a worker that lost the database does not fail another's trial as stale right after it
    returns (everyone's heartbeats are old then), but does once the owner has stayed silent for a
    grace period after."""
    root, env = team
    name, grace = f"calls-{uuid.uuid4().hex[:6]}", 3  # (no sweep here: the shortest grace the restart outlasts)
    owner = optuna.create_study(study_name=name, storage=make_storage(env["OPTUNA_STORAGE"], HEARTBEAT, grace))
    other = optuna.load_study(study_name=name, storage=make_storage(env["OPTUNA_STORAGE"], HEARTBEAT, grace))
    told, running = owner.ask(), owner.ask()
    owner._storage.record_heartbeat(running._trial_id)
    servers.stop_postgres(root)
    restart = threading.Timer(grace + 2, servers.start_postgres, (root, servers.pg_port(root)))
    restart.start()
    try:
        started = time.monotonic()
        owner.tell(told, 1.0)  # waits for the database
        assert time.monotonic() - started > grace
    finally:
        restart.join()
    assert len(other.get_trials()) == 2  # the other worker's next call finds the database again
    fail_stale(other)  # right after the outage: the owner's beat is old, but so is everyone's
    assert owner.get_trials()[running.number].state == TrialState.RUNNING
    assert owner.get_trials()[told.number].state == TrialState.COMPLETE
    owner._storage.record_heartbeat(running._trial_id)  # the owner beats again: still alive
    time.sleep(grace + 1)
    fail_stale(other)  # ...and then stays silent for a grace period: dead
    assert owner.get_trials()[running.number].state == TrialState.FAIL
    optuna.delete_study(study_name=name, storage=owner._storage)  # (trials without runs: not a sweep's)


def test_a_partitioned_worker_comes_back_without_double_counting(team, tmp_path):
    """A worker that reaches both servers through a network path (tests/partition.py) cut for longer
    than the grace period, while it trains, then healed: it trains on meanwhile, its connections hang;
    the other worker fails its trial and runs it again; once the path heals, its late result is not
    counted, its run is closed as superseded by the retry, and it carries on. (Before: `Cannot tell a
    FAIL trial` ended the worker.)"""
    from tests.partition import Link

    root, env = team
    experiment, study_name, n = f"cut-{uuid.uuid4().hex[:6]}", f"cut-{uuid.uuid4().hex[:6]}", 3
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    links = [Link(servers.pg_port(root)), Link(servers.mlflow_port(root))]
    behind = {"OPTUNA_STORAGE": links[0].through(env["OPTUNA_STORAGE"]),
              "MLFLOW_TRACKING_URI": links[1].through(env["MLFLOW_TRACKING_URI"])}
    args = sweep_args(study_name, experiment, n, steps=60)
    workers = [start_worker("local", [*args, f"hydra.sweep.dir={tmp_path}/{i}"], clean_env() | env | extra,
                            tmp_path / f"w{i}.log") for i, extra in enumerate((behind, {}))]
    study = load_study(env, study_name)
    victim = wait_for(lambda: training_trial(study, experiment, workers[0]), 240, "worker 0 to train a trial")
    for link in links:
        link.cut()
    try:
        wait_for(lambda: study.get_trials()[victim.number].state == TrialState.FAIL, 120,
                 "the partitioned worker's trial to be failed as stale")
        time.sleep(2)
    finally:
        for link in links:
            link.heal()
    for i, w in enumerate(workers):
        assert w.wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    trials, kids = assert_whole(study, experiment, n)
    [retry] = [t for t in trials if retried_trial(t) == victim.number]
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE
    [late] = kids[kids["tags.optuna.trial_number"] == str(victim.number)].to_dict("records")
    assert late["status"] == "KILLED" and late["tags.superseded_by_trial"] == str(retry.number)
    store_is_whole(env)


def start_job(args: list[str], env: dict, log_path) -> subprocess.Popen:
    with open(log_path, "w") as out:
        return subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def training_run(experiment: str):
    """The experiment's run, once it has logged a training loss."""
    runs = mlflow.search_runs(experiment_names=[experiment])
    if not runs.empty and mlflow.MlflowClient().get_metric_history(runs.iloc[0]["run_id"], "train/loss"):
        return runs.iloc[0]["run_id"]


def test_a_tracking_outage_loses_no_point_of_a_curve_and_one_past_a_jobs_allowance_fails_its_trial_for_a_retry(
        team, tmp_path):
    """The tracking server stops for 12 s while two programs train, each with MLflow's client set
    not to retry (so the outage outlasts its retries, as a restart longer than their ~4 min does).
    A single job (the default allowance, tracking.outage_seconds=900) trains on, keeps its curve's
    points and sends them when the server is back: its run ends FINISHED with every step of its
    curve, its scores and its adapter (before: the first write in the outage failed the job). An
    Optuna sweep whose allowance is 5 s: its trial fails, and recording the failure fails too until
    the server is back: its run ends FAILED with its error, never FINISHED by MLflow's exit hook
    (before: FINISHED or RUNNING, never FAILED); the trial is queued again and run again, and the
    study ends with exactly n_trials COMPLETE (before: failed for good). One outage meets both, as
    a team's restart meets every program at once."""
    root, env = team
    job_experiment, steps = f"outage-{uuid.uuid4().hex[:6]}", 300  # (steps enough to train on till the trial trains)
    experiment, study_name, n = f"away-{uuid.uuid4().hex[:6]}", f"away-{uuid.uuid4().hex[:6]}", 1
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    job = start_job([*TINY, f"train.max_steps={steps}", "train.logging_steps=1",
                     f"tracking.experiment={job_experiment}"], clean_env() | env | NO_RETRIES, tmp_path / "job.log")
    args = [*sweep_args(study_name, experiment, n, steps=60), "train.logging_steps=1", "tracking.outage_seconds=5",
            f"hydra.sweep.dir={tmp_path}/multirun"]
    sweep = start_job(args, clean_env() | env | NO_RETRIES, tmp_path / "sweep.log")
    study = load_study(env, study_name)
    victim = wait_for(lambda: training_trial(study, experiment), 240, "a trial to train")
    run_id = training_run(job_experiment)
    sent = len(mlflow.MlflowClient().get_metric_history(run_id, "train/loss")) if run_id else steps
    assert sent < steps, f"the job has {sent} of {steps} points of its curve: it should still be training"
    outage(root, 12)
    assert job.wait(timeout=600) == 0, (tmp_path / "job.log").read_text()[-3000:]
    assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    assert "the tracking server is unreachable" in (tmp_path / "job.log").read_text()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and "sst2/acc" in run.data.metrics and "adapter_manifest_sha256" in run.data.tags
    curve = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(h.step for h in curve) == list(range(1, steps + 1))
    trials, kids = assert_whole(study, experiment, n)
    [failed] = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number == victim.number
    [retry] = [t for t in trials if retried_trial(t) == victim.number]
    assert retry.params == victim.params and retry.state == TrialState.COMPLETE
    [run] = kids[kids["tags.optuna.trial_number"] == str(victim.number)].to_dict("records")
    assert run["status"] == "FAILED" and run["tags.error"].startswith("TrackingUnavailable: the tracking server has")
    store_is_whole(env)


CAN_UNSHARE_PID = os.geteuid() == 0 and subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                       capture_output=True).returncode == 0


@pytest.mark.skipif(not CAN_UNSHARE_PID, reason="needs root and unshare(1) to start a process in a new PID namespace")
def test_a_live_run_in_another_pid_namespace_is_not_taken_for_dead(tmp_path):
    """A container sharing the host name: its process's pid means nothing here, so a job starting
    here must not close its live run. (Before: host and pid matched a process of this namespace,
    or none, and the live run was closed KILLED.)"""
    from sweep.tracking.store import close_orphaned_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = ("import sys, time, mlflow; from sweep.runtime import processes; mlflow.set_tracking_uri(sys.argv[1]);"
            "run = mlflow.start_run(tags=processes.owner_tags()); print(run.info.run_id, flush=True); time.sleep(120)")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, uri],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, env=clean_env() | {"PYTHONPATH": str(ROOT)})
    try:
        run_id = proc.stdout.readline().strip()
        mlflow.set_tracking_uri(uri)
        run = mlflow.get_run(run_id)
        assert run.data.tags["pid"] == "1"  # the first process of its namespace
        assert close_orphaned_runs(run.info.experiment_id, OmegaConf.create({"uri": uri, "outage_seconds": 5})) == []
        assert mlflow.get_run(run_id).info.status == "RUNNING"
    finally:
        proc.kill()
        proc.wait()
