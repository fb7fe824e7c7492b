"""A team's setup end to end: the dashboard on a team's PostgreSQL study, and the helpers of the
team's sweeps (workers on hosts of their own, the MLflow UI a sweep links to). Three hosts sharing
one study while one dies is proved in tests/test_faults.py's chaos test, on the same servers and
under every server fault at once."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from urllib.parse import urlsplit

import optuna
import pytest

from sweep.study.storage import make_storage
from tests.conftest import ROOT, clean_env, headless_chromium

pytestmark = pytest.mark.e2e
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
