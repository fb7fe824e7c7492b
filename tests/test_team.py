"""A team's setup end to end: workers on several hosts sharing one PostgreSQL study and one MLflow
server (started as `make services` starts them); one worker dies mid-trial."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from sweep.study.storage import make_storage
from sweep.vocabulary import STUDY_METHOD
from tests.conftest import ROOT, TINY, clean_env, headless_chromium

pytestmark = pytest.mark.e2e
N_TRIALS = 5
CAN_SET_HOSTNAME = os.geteuid() == 0 and shutil.which("unshare") is not None


def start_worker(host: str, args: list[str], env: dict, log_path) -> subprocess.Popen:
    """`python sweep.py ARGS` on a host of its own (a UTS namespace named `host`, when root)."""
    sweep = [sys.executable, "sweep.py", *args]
    cmd = ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "worker", *sweep] \
        if CAN_SET_HOSTNAME else sweep
    with open(log_path, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_hosts_one_study_one_dies(services, tmp_path):
    """Three workers with their own host names on the team's servers, one SIGKILLed mid-trial: slow
    because its trial is failed only once its heartbeats stop for the grace period, then run again."""
    experiment, study_name = f"team-{uuid.uuid4().hex[:6]}", f"team-{uuid.uuid4().hex[:6]}"
    env = clean_env() | services
    args = ["-m", "hydra/sweeper=optuna", *TINY, "train.max_steps=12", f"hydra.sweeper.n_trials={N_TRIALS}",
            f"hydra.sweeper.study_name={study_name}", "hydra.sweeper.heartbeat_interval=1",
            "hydra.sweeper.grace_period=5", "train.lr=tag(log,interval(1e-4,1e-2))", "lora.r=choice(1,2,4)",
            f"tracking.experiment={experiment}"]
    hosts = ["w0", "w1", "w2"] if CAN_SET_HOSTNAME else ["local", "local", "local"]
    workers = [start_worker(h, [*args, f"hydra.sweep.dir={tmp_path}/{i}"], env, tmp_path / f"w{i}.log")
               for i, h in enumerate(hosts)]
    storage = make_storage(services["OPTUNA_STORAGE"])
    study = wait_for(lambda: optuna.load_study(study_name=study_name, storage=storage)
                     if study_name in optuna.get_all_study_names(storage) else None, 180, "the study")

    mlflow.set_tracking_uri(services["MLFLOW_TRACKING_URI"])

    def victim_trial():  # a RUNNING trial of worker 1 whose MLflow run has started
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{workers[1].pid}") and not mlflow.search_runs(
                    experiment_names=[experiment], filter_string=f"tags.`optuna.trial_number` = '{t.number}'").empty:
                return t
    victim = wait_for(victim_trial, 240, "worker 1 to run a trial")
    command_lines = [open(f"/proc/{w.pid}/cmdline").read() for w in workers]
    time.sleep(2)
    os.killpg(workers[1].pid, signal.SIGKILL)  # the host is gone: no cleanup of any kind
    for i in (0, 2):
        assert workers[i].wait(timeout=600) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]

    trials = study.get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == N_TRIALS, [
        (t.number, t.state.name, t.user_attrs, t.params) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[victim.number].state == TrialState.FAIL
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    first = [tuple(sorted(t.params.items())) for t in trials[:3]]
    assert len(set(first)) == 3  # three workers asking at once never draw the same configuration
    assert len({t.user_attrs["worker"].split(":")[0] for t in trials}) == len(set(hosts))

    runs = mlflow.search_runs(experiment_names=[experiment])
    parents = runs[runs["tags.method"] == STUDY_METHOD]
    kids = runs[runs["tags.method"] != STUDY_METHOD]
    assert len(parents) == 1 and parents.iloc[0]["status"] == "FINISHED"
    assert set(kids["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert "RUNNING" not in set(runs["status"])
    [killed] = kids[kids["tags.optuna.trial_number"] == str(victim.number)].to_dict("records")
    assert killed["status"] == "KILLED"
    done = kids[kids["status"] == "FINISHED"]
    assert len(done) == N_TRIALS
    run_id = done.iloc[0]["run_id"]
    assert mlflow.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")  # served, not a local path
    adapter = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(tmp_path / "dl"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
    password = urlsplit(services["OPTUNA_STORAGE"]).password
    assert password not in " ".join((tmp_path / f"w{i}.log").read_text() for i in range(3))
    assert not any(password in line for line in command_lines)  # nor a command line (`ps`)

    ui_lands_on_the_runs_with_their_datasets(tmp_path, (tmp_path / "w0.log").read_text(), done, study_name)


def ui_lands_on_the_runs_with_their_datasets(tmp_path, log: str, runs, study_name: str) -> None:
    """The MLflow UI link a sweep prints opens the runs table (not MLflow 3's GenAI overview): the
    study's parent run, and under it (expanded) its trials with their training and evaluation
    data in the Dataset column."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    [url] = [line.split(": ", 1)[1].strip() for line in log.splitlines() if line.startswith("Runs in the MLflow UI")]
    body = (By.TAG_NAME, "body")
    login = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ['MLFLOW_TRACKING_PASSWORD']}"
    with headless_chromium(tmp_path / "chrome-profile", 1600, 1000) as driver:
        driver.execute_cdp_cmd("Network.enable", {})  # (the server's basic auth, as a browser's login prompt sends it)
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": "Basic " + base64.b64encode(login.encode()).decode()}})
        driver.get(url)
        WebDriverWait(driver, 60).until(ec.text_to_be_present_in_element(body, f"study:{study_name}"))
        parent = driver.find_element(By.XPATH, f"//span[text()='study:{study_name}']/ancestor::div[contains(@class,'ag-cell')][1]")
        parent.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()  # show its trials
        WebDriverWait(driver, 60).until(ec.text_to_be_present_in_element(body, runs.iloc[0]["tags.mlflow.runName"]))
        text, landed = driver.find_element(*body).text, driver.current_url
        driver.save_screenshot(str(tmp_path / "mlflow-ui.png"))
    assert "/runs?" in landed and "workflowType=machine_learning" in landed
    assert "Detect Issues" not in text and "Token Usage" not in text  # not the GenAI trace overview
    assert "Dataset" in text and "sst2/validation" in text and "sst2/train" in text
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "mlflow-ui.png")
    assert pixels[..., :3].std() > 0.05


def test_the_dashboard_opens_a_teams_postgresql_study_and_never_prints_its_password(services, tmp_path):
    """`make dashboard STORAGE=...` (scripts/dashboard.py, the URL in the environment): optuna-dashboard
    serves the team's study; its output names the storage with the password masked."""
    import json
    import urllib.request

    from scripts.services import free_port

    storage = services["OPTUNA_STORAGE"]
    optuna.create_study(study_name="seen-by-the-dashboard", storage=make_storage(storage))
    port, log = free_port(), tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "scripts/dashboard.py", "--port", str(port)], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=clean_env() | {"OPTUNA_STORAGE": storage})
    try:
        deadline, studies = time.monotonic() + 120, None
        while studies is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert studies is not None, log.read_text()[-3000:]
    assert "seen-by-the-dashboard" in {s["study_name"] for s in studies}
    password, output = urlsplit(storage).password, log.read_text()
    assert password and password not in output and "***@" in output, output
