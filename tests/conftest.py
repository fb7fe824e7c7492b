"""Shared fixtures: composed configs, the tiny model, a throw-away MLflow store."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sweep  # noqa: E402,F401  (registers resolvers)
from sweep.vocabulary import STUDY_METHOD

ROOT = Path(__file__).resolve().parent.parent
# Small and fast: the tiny model, a few examples (8 development ones), a few steps; a multirun's jobs in
# the test's sweep process (Hydra's basic launcher), not a new interpreter each (the default, fresh_process:
# seconds a job).
TINY = ["hydra/launcher=basic", "model=tiny", "data.max_train_samples=32", "train.max_steps=2", "train.batch_size=4",
        "eval.limit=8", "eval.batch_size=8", "data.dev_size=8"]


def pytest_collection_finish(session):
    """What collection imported (the test modules and the libraries they import) is frozen out of
    the cyclic collector's sight, as a process's first job freezes its libraries
    (sweep/runtime/memory.py): the in-process tests' collections then scan only their own objects
    (seven such files: 103 s to 87 s)."""
    from sweep.runtime import memory

    memory.freeze_long_lived()


def pytest_collection_modifyitems(items):
    """Slow files first, then end-to-end ones, then the unit tests: on two workers (`make test`: a
    file per worker at a time) the short files fill in at the end instead of a long one running alone."""
    rank = {}
    for item in items:
        module = item.module.__name__
        weight = 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("e2e") else 2
        rank[module] = min(rank.get(module, 2), weight)
    items.sort(key=lambda item: rank[item.module.__name__])


def compose(*overrides: str):
    """The config `python sweep.py <overrides>` would run (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


STORE_VARIABLES = ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE")


@pytest.fixture(autouse=True)
def no_store_variables(monkeypatch):
    """Tests choose their own stores. A developer's shell may point at the team's servers
    (`source .services/env`), and `mlflow.set_tracking_uri`, called by any earlier test, sets
    MLFLOW_TRACKING_URI in this process, which later defaults would take."""
    for name in STORE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tracking(tmp_path):
    """Overrides that send runs to a fresh SQLite MLflow store under tmp_path."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts"]


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny test model."""
    from sweep.training.models import load_model_and_tokenizer

    cfg = compose("model=tiny")
    return load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0)


def run_sweep(*args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python sweep.py ARGS` as a user runs it, in a process of its own (forked from one that
    imported the libraries: tests/forked.py); output captured."""
    from tests import forked

    return forked.run(["sweep.py", *args], cwd, clean_env(), timeout)


def clean_env() -> dict[str, str]:
    """The environment for a child process: without the store variables (`mlflow.set_tracking_uri`
    in this test may have set MLFLOW_TRACKING_URI since `no_store_variables` ran)."""
    return {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES} | {"PYTHONUNBUFFERED": "1"}


def runs_of(tracking_overrides: list[str], experiment: str = "sft-sweep"):
    """All MLflow runs of `experiment` in the store named by `tracking_overrides`, as a DataFrame."""
    import mlflow

    from sweep.tracking.store import init_store

    uri = tracking_overrides[0].split("=", 1)[1]
    init_store(uri)  # a child process may be creating the store right now
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


def training_run_in_another_process(tracking, proc, log: Path, timeout: float = 300) -> dict:
    """A RUNNING run of the store named by `tracking` that has logged a training loss and belongs
    to a process other than `proc` (a sweep's worker or job process), as a dict of its columns."""
    import mlflow

    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        if not Path(tracking[0].split("///", 1)[1]).exists():
            continue
        for run in runs_of(tracking).to_dict("records"):
            if (run["status"] == "RUNNING" and run.get("tags.pid") != str(proc.pid)
                    and mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")):
                return run
    raise AssertionError("no run trained in a process of its own: " + log.read_text()[-3000:])


def optuna_args(tmp_path, *extra) -> list[str]:
    """`-m hydra/sweeper=optuna` on the tiny model, with the study in tmp_path."""
    return ["-m", "hydra/sweeper=optuna", *TINY, f"hydra.sweeper.storage={tmp_path}/optuna.journal",
            "hydra.sweeper.study_name=study", *extra]


def study_of(tmp_path):
    """The study that `optuna_args(tmp_path)` sweeps write."""
    import optuna

    from sweep.study.storage import make_storage

    return optuna.load_study(study_name="study", storage=make_storage(f"{tmp_path}/optuna.journal"))


def children(tracking):
    """(trial runs, study parent runs) of the store named by `tracking`."""
    runs = runs_of(tracking)
    return runs[runs["tags.method"] != STUDY_METHOD], runs[runs["tags.method"] == STUDY_METHOD]


@pytest.fixture(scope="session")
def services():
    """The team's servers, started as `make services` starts them (scripts/services.py): a
    PostgreSQL cluster and an `mlflow server` over it, on free ports. Yields the environment a
    worker gets from `source <root>/env` (MLFLOW_TRACKING_URI, its user and password, OPTUNA_STORAGE),
    signed in to its tracking server for the session."""
    from scripts.services import throwaway

    with throwaway() as env, signed_in(env):
        yield env


@contextmanager
def signed_in(env: dict):
    """This process and its children log in to the tracking server of `env` (MLflow's client reads
    MLFLOW_TRACKING_USERNAME/PASSWORD from the environment); the previous login comes back after."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: env[name] for name in names})
    try:
        yield
    finally:
        for name, value in before.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


@contextmanager
def headless_chromium(profile: Path, width: int = 1200, height: int = 1600):
    """Debian's Chromium through selenium (installed by `make test` where missing; under CI a
    missing browser fails the test, elsewhere it skips)."""
    import shutil

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing: `make browser` installs them")
        pytest.skip("chromium not installed (make browser)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()
