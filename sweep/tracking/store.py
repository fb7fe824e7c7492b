"""The tracking store: opening it (creating its tables under a lock), its experiments, and the runs
that crashed processes left RUNNING."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import mlflow
from omegaconf import DictConfig

from sweep.config import PROJECT_ROOT, ConfigError
from sweep.runtime import processes
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import redact
from sweep.tracking import outage
from sweep.tracking.checks import is_server, probe_server
from sweep.vocabulary import ERROR

log = logging.getLogger(__name__)
EMPTY_STORE_DIR = PROJECT_ROOT / ".cache" / "mlflow"  # an empty store per MLflow version, copied for new ones


# What an experiment holds, for the MLflow UI: model training, not GenAI traces. MLflow 3.17's UI
# reads this tag only when its GenAI / model-training switch is off; with the switch (the default)
# it opens every experiment on the GenAI trace overview unless the URL asks for the model-training
# workflow, so the links we print do (runs_page).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves the embedded store
def system_metrics_interval(tracking: DictConfig) -> float | None:
    """Seconds between samples of the machine for a run's system/* metrics; None when they are off."""
    return float(tracking.system_metrics_interval) if tracking.system_metrics else None


def init_store(uri: str) -> None:
    """Create (or upgrade) the tables of a SQLite tracking store under a file lock.

    MLflow creates its tables the first time a process touches a new SQLite file; two processes
    doing so at once (two sweeps started together, or a reader polling a fresh store) make one of
    them fail with "table ... already exists". The lock serialises that first touch."""
    from filelock import FileLock

    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            copy_empty_store(path)
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def copy_empty_store(path: Path) -> None:
    """A new SQLite store as a copy of an empty one this MLflow version made: MLflow builds a new
    store's tables by running its whole migration history (seconds, in every new store: every test,
    every first run); a copy takes milliseconds. The template is made once per MLflow version under
    its own lock; its Default experiment is pointed where a new store's would point (./mlruns/0)."""
    import shutil
    import sqlite3

    from filelock import FileLock

    template = EMPTY_STORE_DIR / f"mlflow-{mlflow.__version__}-empty.db"
    template.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(template) + ".lock"):
        if not template.exists():
            draft = template.with_name(template.name + ".draft")
            draft.unlink(missing_ok=True)
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{draft}").search_experiments(max_results=1)
            draft.replace(template)
    shutil.copyfile(template, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (str(Path("mlruns").resolve() / "0"),))


def require_store(uri: str) -> None:
    """For readers (reports, reproduce): a SQLite store that does not exist is a mistake in the
    URI, not a store to create; a server must answer."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no tracking store at {uri}: run `make run` or `python sweep.py` first, "
                          f"or pass --tracking-uri")
    probe_server(uri)


def artifact_location(tracking: DictConfig) -> str | None:
    """Where a new experiment's artifacts go: a tracking server serves (and places) its own, so
    no local path is forced on it; a local store gets `tracking.artifact_location` as a file URI."""
    location = tracking.artifact_location
    if is_server(tracking.uri) or not location:
        return None
    return str(location) if "://" in str(location) else Path(location).resolve().as_uri()


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs (with their datasets), not its GenAI overview."""
    base = tracking_uri if is_server(tracking_uri) else LOCAL_UI
    return f"{redact(base).rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def client_for(tracking: DictConfig, seconds: float | None = None):
    """The client for `tracking.uri`: a server's calls wait for it up to `seconds` (default
    `tracking.outage_seconds`; every command has reached it once as it started: sweep.py's probe; a
    restart meanwhile is ridden out, then TrackingUnavailable); a local store's errors are raised at once."""
    if is_server(tracking.uri):
        return outage.PatientClient(float(seconds or tracking.outage_seconds), tracking_uri=tracking.uri)
    return mlflow.MlflowClient(tracking_uri=tracking.uri)


def open_experiment(tracking: DictConfig) -> str:
    """Point MLflow at `tracking.uri` and return the id of `tracking.experiment` (created if new,
    and marked a model-training experiment, so the MLflow UI opens on its runs)."""
    mlflow.set_tracking_uri(tracking.uri)
    try:
        init_store(tracking.uri)
        client = client_for(tracking)
        exp = client.get_experiment_by_name(tracking.experiment)
        if exp is None:
            try:
                return client.create_experiment(tracking.experiment, artifact_location=artifact_location(tracking),
                                                tags=EXPERIMENT_KIND)
            except mlflow.exceptions.MlflowException:
                exp = client.get_experiment_by_name(tracking.experiment)  # another worker created it just now
                if exp is None:
                    raise
        for key, value in EXPERIMENT_KIND.items():
            if key not in exp.tags:  # (an experiment made before the tag; a kind someone chose stays)
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    except outage.TrackingUnavailable:  # (a server that answered as the command started: a retry may find it)
        raise
    except Exception as e:
        raise ConfigError(
            f"tracking.uri={redact(tracking.uri)!r} cannot be opened ({type(e).__name__}: "
            f"{first_line(e)}); "
            "use e.g. tracking.uri=sqlite:///$PWD/mlflow.db or an http(s):// tracking server"
        ) from None


def close_orphaned_runs(experiment_id: str, tracking: DictConfig) -> list[str]:
    """Close as KILLED the experiment's RUNNING runs whose process, on this host, is gone (a
    SIGKILL or a crash runs no cleanup); every job does this as it starts. Returns their ids."""
    client = client_for(tracking)
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        if processes.owner_gone(run.data.tags):
            client.set_tag(run.info.run_id, ERROR, "its process (host {host}, pid {pid}) is gone; closed by a later "
                           "run".format(**run.data.tags))
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by a process that is gone: closed as KILLED", run.info.run_id)
            closed.append(run.info.run_id)
    return closed
