"""Faults users meet in overnight sweeps: each is recorded, reported, and leaves nothing behind.
See docs/reliability.md for the table of faults and what the user sees."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from optuna.trial import TrialState

from sweep.runtime.secrets import redact
from tests import forked
from tests.conftest import (
    ROOT,
    TINY,
    children,
    clean_env,
    optuna_args,
    run_sweep,
    runs_of,
    study_of,
    training_run_in_another_process,
)


@pytest.mark.e2e
def test_a_job_raising_mid_training_in_a_grid(tracking):
    p = run_sweep("-m", *TINY, *tracking, "train.max_steps=4", "train.logging_steps=1",
                  "debug.fail_at_step=2,null")
    assert p.returncode == 1 and "1 of 2 jobs did not finish" in p.stderr and "InjectedFailure" in p.stderr
    runs = runs_of(tracking)
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert "failing on purpose at step 2" in failed["tags.error"]
    files = [a.path for a in mlflow.MlflowClient().list_artifacts(failed["run_id"])]
    assert {"traceback.txt", "config.yaml", "command.txt"} <= set(files)
    steps = [h.step for h in mlflow.MlflowClient().get_metric_history(failed["run_id"], "train/loss")]
    assert steps and max(steps) <= 2  # the partial curve is kept
    assert (runs["status"] == "FINISHED").sum() == 1
    assert "FINISHED" in p.stdout and "FAILED" in p.stdout  # the table shows both


@pytest.mark.e2e
def test_a_job_raising_in_an_optuna_sweep(tmp_path, tracking):
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.sampler=grid", "train.max_steps=4",
                               "debug.fail_at_step=choice(2,1000)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    states = {t.params["debug.fail_at_step"]: t.state for t in study_of(tmp_path).trials}
    assert states == {2: TrialState.FAIL, 1000: TrialState.COMPLETE}  # 1000: past max_steps, never fires
    kids = children(tracking)[0]
    assert sorted(kids["status"]) == ["FAILED", "FINISHED"]
    assert "1 of 2 jobs did not finish" in p.stderr


def _wait_for_loss(tracking, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        try:
            runs = runs_of(tracking)
        except Exception:  # the store or experiment does not exist yet
            continue
        if any(mlflow.MlflowClient().get_metric_history(run_id, "train/loss") for run_id in runs.get("run_id", [])):
            return
    raise AssertionError("no training loss was recorded in time")


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_kills_the_run_promptly_and_keeps_what_was_recorded(tracking, sig):
    """SIGTERM or SIGINT to a training job ends it within 30 s, its run KILLED with what it recorded kept:
    slow because the job is a new interpreter (the signal must reach the real command's process)."""
    proc = subprocess.Popen([sys.executable, "sweep.py", *TINY, *tracking, "train.max_steps=100000",
                             "train.logging_steps=1", "data.max_train_samples=64"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_loss(tracking)
    sent = time.time()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert time.time() - sent < 30 and proc.returncode != 0
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "KILLED" and run["tags.error"] == "interrupted"
    assert "config.yaml" in [a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])]
    assert mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")


@pytest.mark.e2e
def test_a_signal_delivered_inside_an_mlflow_write_lets_the_write_finish(tracking):
    """The timing forced: a hook sends SIGTERM to the job from inside its first write of a metric
    (Python runs the handler there, mid-call). The write completes, then the run ends KILLED before
    training starts. (Signals reach the main thread only: the training curve, sent by a thread of its
    own, is never written halfway by one.)"""
    args = [*TINY, *tracking, "train.max_steps=100000", "train.logging_steps=1"]
    code = f"""if True:
        import os, runpy, signal, sys
        import mlflow
        real, sent = mlflow.log_metrics, []
        def log_metrics(metrics, *a, **kw):
            if "trainable_params" in metrics and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)  # its handler runs before the line below
            return real(metrics, *a, **kw)
        mlflow.log_metrics = log_metrics
        sys.argv = ["sweep.py", *{args!r}]
        runpy.run_path("sweep.py", run_name="__main__")
    """
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=clean_env())
    assert p.returncode != 0
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "KILLED" and run["tags.error"] == "interrupted", p.stderr[-2000:]
    assert run["metrics.trainable_params"] > 0  # the interrupted write, complete
    assert not mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")  # nothing after it


@pytest.mark.e2e
def test_a_run_left_running_by_a_sigkilled_process_is_closed_by_the_next_run(tracking):
    proc = subprocess.Popen([sys.executable, "sweep.py", *TINY, *tracking, "train.max_steps=100000",
                             "train.logging_steps=1", "data.max_train_samples=64"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    _wait_for_loss(tracking)
    proc.kill()  # no handler runs: the run stays RUNNING
    proc.wait(timeout=60)
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "RUNNING" and run["tags.pid"] == str(proc.pid)
    p = run_sweep(*TINY, *tracking, "method=zero_shot")
    assert p.returncode == 0, p.stderr[-2000:]
    killed = runs_of(tracking).set_index("run_id").loc[run["run_id"]]
    assert killed["status"] == "KILLED" and f"pid {proc.pid}) is gone" in killed["tags.error"]


def _wrapped_interruption():
    from sweep.runtime.interrupts import Terminated

    try:
        raise Terminated("received signal 15")
    except KeyboardInterrupt as e:
        raise RuntimeError("a library's own error") from e


def _swallowed_interruption_then_a_failure():
    from sweep.runtime import interrupts

    try:
        interrupts._on_signal(signal.SIGTERM, None)  # the handler, as a SIGTERM runs it
    except KeyboardInterrupt:
        pass  # a library that catches it (and carries on badly)
    raise ValueError("a failure on the way out")


@pytest.mark.parametrize("stop", [_wrapped_interruption, _swallowed_interruption_then_a_failure])
def test_an_interruption_that_surfaces_as_another_error_still_ends_the_run_killed(tmp_path, stop):
    """Under load a SIGTERM can reach the run as another exception (a library wraps or swallows
    it, a cleanup fails while it unwinds): the run was stopped, not broken, so it is KILLED."""
    from sweep.tracking import lifecycle

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("stops", artifact_location=str(tmp_path / "artifacts"))
    with pytest.raises((RuntimeError, ValueError)):
        with lifecycle.mlflow_run(experiment, "stopped", {}) as run:
            stop()
    stopped = mlflow.MlflowClient().get_run(run.info.run_id)
    assert (stopped.info.status, stopped.data.tags["error"]) == ("KILLED", "interrupted")
    with pytest.raises(ValueError):  # and a failure with no signal behind it is still FAILED
        with lifecycle.mlflow_run(experiment, "broken", {}) as run:
            raise ValueError("broken")
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_a_run_owner_is_gone_only_when_its_pid_is_gone_or_reused():
    from sweep.runtime import processes

    me = processes.owner_tags()
    assert not processes.owner_gone(me)
    assert processes.owner_gone(me | {"pid_start": str(int(me["pid_start"]) - 1)})  # the pid, reused since
    assert processes.owner_gone(me | {"pid": "999999999"})
    assert not processes.owner_gone(me | {"host": "another-host", "pid": "999999999"})  # cannot be checked here
    assert not processes.owner_gone(me | {"pid": "1; rm -rf /"})  # not a pid: left alone


@pytest.mark.e2e
def test_an_interrupted_optuna_sweep_resumes(tmp_path, tracking):
    """SIGINT to an Optuna sweep queues its running trial again and says so; the same command then completes
    the study: slow because the interrupted sweep is a new interpreter, then the resumed one runs two jobs."""
    args = [*optuna_args(tmp_path, "hydra.sweeper.n_trials=2", "lora.r=choice(1,2)",
                         "train.logging_steps=1", "data.max_train_samples=64"), *tracking]
    log = tmp_path / "stderr.log"
    with log.open("w") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen([sys.executable, "sweep.py", *args, "train.max_steps=100000"], cwd=ROOT,
                                stdout=err, stderr=err)
        _wait_for_loss(tracking)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert "interrupted: trial(s) [0] queued again; rerun the same command" in log.read_text()
    assert study_of(tmp_path).trials[0].state == TrialState.FAIL

    p = run_sweep(*args, "train.max_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert [t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.COMPLETE].count(0) == 1


@pytest.mark.e2e
def test_sigterm_to_a_sweep_with_two_jobs_stops_its_worker_too(tmp_path, tracking):
    """`kill PID` reaches the sweep's own process only: it passes the signal on to the worker it
    spawned, each of them to its job's process (the default launcher), both runs end KILLED, both
    trials are queued again, and no process is left."""
    args = [*optuna_args(tmp_path, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "lora.r=choice(1,2)",
                         "train.logging_steps=1", "data.max_train_samples=64", "hydra/launcher=fresh_process"),
            *tracking]
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "sweep.py", *args, "train.max_steps=100000"], cwd=ROOT,
                                stdout=err, stderr=err, env=clean_env(), start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:  # both workers training
            time.sleep(1)
            runs = runs_of(tracking) if Path(tracking[0].split("///", 1)[1]).exists() else None
            kids = [] if runs is None or runs.empty else children(tracking)[0]
            if len(kids) == 2 and all(mlflow.MlflowClient().get_metric_history(r, "train/loss") for r in kids["run_id"]):
                break
        else:
            raise AssertionError("two trials never trained at once: " + log.read_text()[-3000:])
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert time.time() - sent < 90
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing of the sweep is left running
    kids = children(tracking)[0]
    assert sorted(kids["status"]) == ["KILLED", "KILLED"] and set(kids["tags.error"]) == {"interrupted"}, \
        f"{list(kids['tags.error'])}\n{log.read_text()[-4000:]}"
    trials = study_of(tmp_path).trials
    assert sorted(t.state.name for t in trials if t.user_attrs.get("retry_of") is None) == ["FAIL", "FAIL"]
    assert sorted(t.user_attrs["retry_of"] for t in trials if t.state == TrialState.WAITING) == [0, 1]


@pytest.mark.e2e
def test_a_sigkilled_spawned_worker_is_recovered_by_the_sweep_that_spawned_it(tmp_path, tracking):
    """n_jobs=2: the worker process the sweep spawned (not the sweep itself) is SIGKILLed mid-trial;
    the sweep fails that trial, queues it again, closes its run KILLED and completes the study."""
    args = [*optuna_args(tmp_path, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "lora.r=choice(1,2,4)",
                         "train.logging_steps=1", "data.max_train_samples=64", "train.max_steps=60"), *tracking]
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "sweep.py", *args], cwd=ROOT, stdout=err, stderr=err,
                                env=clean_env(), start_new_session=True)
        victim = training_run_in_another_process(tracking, proc, log)
        os.kill(int(victim["tags.pid"]), signal.SIGKILL)
        proc.wait(timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    trials = study_of(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and not [t for t in trials if t.state == TrialState.RUNNING]
    killed = int(victim["tags.optuna.trial_number"])
    assert trials[killed].state == TrialState.FAIL
    assert [t.user_attrs.get("retry_of") for t in complete].count(killed) == 1
    runs = runs_of(tracking).set_index("run_id")
    assert runs.loc[victim["run_id"], "status"] == "KILLED" and "RUNNING" not in set(runs["status"])


@pytest.mark.e2e
def test_three_workers_on_one_study_record_every_trial_once(tmp_path, tracking):
    """n_jobs=3: three worker processes on one study record six trials, each once, with one FINISHED run each
    under one parent: slow because the two extra workers start as new interpreters."""
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3",
                               "lora.r=choice(1,2,4,8)", "lora.dropout=interval(0,0.1)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "database is locked" not in p.stdout + p.stderr
    complete = [t for t in study_of(tmp_path).trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len({t.user_attrs["worker"] for t in complete}) == 3
    kids, parents = children(tracking)
    assert len(parents) == 1 and (kids["status"] == "FINISHED").sum() == 6
    assert sorted(kids["tags.optuna.trial_number"].astype(int)) == sorted(t.number for t in complete)
    assert (kids["tags.optuna.state"] == "COMPLETE").sum() == 6  # each run knows its trial's end


@pytest.mark.e2e
@pytest.mark.parametrize("override,needle", [
    ("lora.rr=3", "error: lora.rr: no such config key (did you mean: lora.r"),
    ("method=lorra", "error: method=lorra: no such option in conf/method/; choose one of "
                     + ", ".join(sorted(p.stem for p in (ROOT / "conf" / "method").glob("[!_]*.yaml")))
                     + " (did you mean: lora, qlora?)"),
    ("method=qlora method.quantization.bnb_4bit_quant_type=nf5", "error: method.quantization.bnb_4bit_quant_type='nf5' is invalid"),
    ("train.optim=adamw_torchh", "error: train.optim='adamw_torchh' is invalid: use a transformers optimizer name"),
    ("lora.alpha=0", "error: lora.alpha=0 is invalid"),
    ("lora.dropout=1", "error: lora.dropout=1 is invalid: must be in [0, 1)"),
])
def test_bad_keys_and_values_fail_in_one_line(tracking, override, needle):
    p = run_sweep(*TINY, *tracking, *override.split())
    assert p.returncode == 2 and needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.e2e
def test_quantization_without_bitsandbytes_fails_before_compute(tracking):
    """`method=qlora` where bitsandbytes is not installed (hidden from this process): one line
    naming the package and the fix, exit 2, no run recorded."""
    hide = ("import runpy, sys; sys.modules['bitsandbytes'] = None; sys.argv = ['sweep.py', *sys.argv[1:]]; "
            "runpy.run_path('sweep.py', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", hide, *TINY, *tracking, "method=qlora"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip() == ("error: method.quantization needs bitsandbytes, which is not installed: run "
                                "`make install` (or `pip install bitsandbytes`), or use method=lora for an "
                                "unquantized base model")
    assert not Path(tracking[0].split("///", 1)[1]).exists() or runs_of(tracking).empty


def test_secrets_in_uris_are_redacted():
    assert redact("postgresql://bob:hunter2@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact("tracking.uri=https://me:tok@mlflow.example") == "tracking.uri=https://me:***@mlflow.example"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_servers_bind_to_localhost_by_default():
    from scripts.dashboard import parser

    [line] = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if "mlflow ui" in ln and "--host" in ln]
    assert "--host 127.0.0.1" in line
    assert parser().parse_args([]).host == "127.0.0.1"  # make dashboard


def test_params_never_hold_the_password(tmp_path):
    from omegaconf import OmegaConf

    from sweep.tracking.records import flat_params
    from tests.conftest import compose

    cfg = compose("tracking.uri=postgresql://bob:hunter2@db/mlflow")
    assert "hunter2" not in str(flat_params(OmegaConf.to_container(cfg, resolve=True)))


def _open_store(uri: str) -> None:
    from sweep.tracking.store import init_store

    init_store(uri)


def test_two_processes_create_a_new_tracking_store_at_once(tmp_path):
    import multiprocessing as mp

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_store, args=(uri,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert mlflow.MlflowClient(tracking_uri=uri).search_experiments()  # the Default experiment exists


@pytest.mark.e2e
def test_check_store_is_clean_after_a_sweep_and_names_each_fault_forced_into_it(tmp_path, tracking):
    """`make check-store` on a finished Optuna sweep finds nothing; then an adapter file changed on
    disk, a second FINISHED run for a COMPLETE trial and the study's parent run deleted are each
    named in one line, and it exits 1."""
    p = run_sweep(*optuna_args(tmp_path, "hydra.sweeper.n_trials=2", "lora.r=choice(1,2)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    uri, journal = tracking[0].split("=", 1)[1], str(tmp_path / "optuna.journal")

    def check_store():
        return forked.run(["-m", "sweep.ops.integrity", "--tracking-uri", uri, "--storage", journal], ROOT, clean_env(),
                          timeout=300)
    clean = check_store()
    assert clean.returncode == 0 and clean.stdout == "", clean.stdout + clean.stderr[-2000:]
    kids, parents = children(tracking)
    first, second = kids.iloc[0], kids.iloc[1]
    weights = Path(first["artifact_uri"].removeprefix("file://")) / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    config = Path(second["artifact_uri"].removeprefix("file://")) / "adapter" / "adapter_config.json"
    config.write_text(config.read_text().replace('"use_rslora": false', '"use_rslora": true'))  # (config alone)
    client = mlflow.MlflowClient(tracking_uri=uri)
    copy = client.create_run(second["experiment_id"], tags={"optuna.study_name": "study", "mlflow.parentRunId":
                             parents.iloc[0]["run_id"], "optuna.trial_number": second["tags.optuna.trial_number"]})
    client.set_terminated(copy.info.run_id, "FINISHED")
    strays = [client.create_run(second["experiment_id"], tags=tags).info.run_id for tags in (
        {"optuna.study_name": "nosuch", "optuna.trial_number": "0"},
        {"optuna.study_name": "study", "optuna.trial_number": "abc"})]
    client.delete_run(parents.iloc[0]["run_id"])
    found = check_store()
    lines = found.stdout.strip().splitlines()
    assert found.returncode == 1, found.stderr[-2000:]
    for run in (first, second):
        assert f"run {run['run_id']}: adapter/ does not match its adapter_manifest_sha256" in found.stdout
    assert f"study 'study' trial {second['tags.optuna.trial_number']}: COMPLETE with 2 FINISHED runs" in found.stdout
    assert sum(f"mlflow.parentRunId='{parents.iloc[0]['run_id']}' names no run" in line for line in lines) == 3
    assert f"run {strays[0]}: tagged with study 'nosuch', which the storage does not hold" in found.stdout
    assert f"run {strays[1]}: tagged with trial 'abc' of study 'study', which has no such trial" in found.stdout


def _can_mount_tmpfs(tmp: Path) -> bool:
    target = tmp / "probe"
    target.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(target)], capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(target)], check=True)
    return True


@pytest.mark.e2e
def test_a_full_artifact_store_fails_the_trial_keeps_the_adapter_and_make_upload_counts_it(tmp_path, tracking):
    """The artifact store fills up while a trial trains (a 4 kB filesystem mounted where the adapter
    goes): the run ends FAILED with one line naming the fix, the trial FAIL (never COMPLETE without
    its adapter), the adapter stays on local disk; `make upload RUN=<id> STORAGE=...` stores it once
    there is space, ends the run FINISHED and has the study count the trial (a COMPLETE copy with the
    run's development score, in place of the failed one); the store is whole."""
    if os.geteuid() != 0 or not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs root and mount(8) to fill a filesystem for real")
    from sweep.ops.integrity import check_store

    pending, uri = tmp_path / "pending", tracking[0].split("=", 1)[1]
    proc = subprocess.Popen([sys.executable, "sweep.py", *optuna_args(tmp_path, "hydra.sweeper.n_trials=1"), *tracking,
                             "train.max_steps=60", "train.logging_steps=1", f"paths.pending={pending}"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    _wait_for_loss(tracking)
    [run] = children(tracking)[0].to_dict("records")
    adapter = Path(run["artifact_uri"].removeprefix("file://")) / "adapter"
    adapter.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(adapter)], check=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        subprocess.run(["umount", str(adapter)], check=True)
    assert proc.returncode != 0
    [run] = children(tracking)[0].to_dict("records")
    assert run["status"] == "FAILED", out[-3000:]
    kept = pending / run["run_id"] / "adapter"
    assert run["tags.error"] == (f"AdapterNotStored: No space left on device while uploading the adapter; it is kept in "
                                 f"{kept}: free space (or fix the store) and run `make upload RUN={run['run_id']}`")
    assert (kept / "adapter_model.safetensors").is_file()
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.FAIL]
    p = forked.run(["-m", "sweep.ops.upload", run["run_id"], "--tracking-uri", uri, "--pending", str(pending),
                    "--storage", f"{tmp_path}/optuna.journal"], ROOT, clean_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not kept.exists()
    stored = mlflow.get_run(run["run_id"])
    assert stored.info.status == "FINISHED" and "adapter_manifest_sha256" in stored.data.tags and "error" not in stored.data.tags
    failed, counted = study_of(tmp_path).trials
    assert failed.state == TrialState.FAIL and counted.state == TrialState.COMPLETE
    assert counted.params == failed.params and counted.user_attrs["retry_of"] == 0
    assert counted.value == stored.data.metrics["dev/sst2/acc"] and stored.data.tags["optuna.trial_number"] == "1"
    assert check_store(uri, f"{tmp_path}/optuna.journal") == []  # the adapter hashes to its tag; one run per trial
    # An upload never overwrites the adapter of a run that did not fail for want of it (this one, now FINISHED).
    kept.mkdir(parents=True)
    (kept / "adapter_model.safetensors").write_bytes(b"another adapter")
    again = forked.run(["-m", "sweep.ops.upload", run["run_id"], "--tracking-uri", uri, "--pending", str(pending)],
                       ROOT, clean_env(), timeout=300)
    assert again.returncode == 2 and "did not fail for want of its adapter" in again.stderr, again.stderr[-2000:]
    assert mlflow.get_run(run["run_id"]).data.tags["adapter_manifest_sha256"] == \
        stored.data.tags["adapter_manifest_sha256"]
