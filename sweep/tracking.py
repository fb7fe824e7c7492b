"""Recording to MLflow: one run per job, with everything needed to compare and reproduce it."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import TrialPruned

from sweep.config import PROJECT_ROOT, ConfigError
from sweep.runtime import processes
from sweep.runtime.distributed import world_size
from sweep.runtime.files import sha256
from sweep.runtime.interrupts import atomic_write, interrupted, signals_received
from sweep.runtime.secrets import redact

# What an experiment holds, for the MLflow UI: model training, not GenAI traces. MLflow 3.17's UI
# reads this tag only when its GenAI / model-training switch is off; with the switch (the default)
# it opens every experiment on the GenAI trace overview unless the URL asks for the model-training
# workflow, so the links we print do (runs_page).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves the embedded store
STUDY_METHOD = "optuna-study"  # the `method` tag of an Optuna study's MLflow parent run
RESULTS_HASH_TAG = "results_sha256"  # sha256 of lm_eval_results.json, checked before the baseline cache reuses it
ADAPTER_DIR = "adapter"
JUDGED_REPLIES = "judged_replies.json"  # each reply, the reference's, their rewards (MLflow table)
DEV_JUDGED_REPLIES = "dev_" + JUDGED_REPLIES  # the same on the development prompts
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
ADAPTER_SHA_TAG = "adapter_sha256"  # of the logged adapter's weights: checked by a stage that starts from it
TRAINED_ADAPTER = "default"  # peft's name of the adapter a job trains (TRL may add a frozen copy, "ref")
log = logging.getLogger(__name__)


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
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def require_store(uri: str) -> None:
    """For readers (reports, reproduce): a SQLite store that does not exist is a mistake in the
    URI, not a store to create."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no tracking store at {uri}: run `make run` or `python sweep.py` first, "
                          f"or pass --tracking-uri")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


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


def open_experiment(tracking: DictConfig) -> str:
    """Point MLflow at `tracking.uri` and return the id of `tracking.experiment` (created if new,
    and marked a model-training experiment, so the MLflow UI opens on its runs)."""
    mlflow.set_tracking_uri(tracking.uri)
    try:
        init_store(tracking.uri)
        client = mlflow.MlflowClient()
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
    except Exception as e:
        raise ConfigError(
            f"tracking.uri={redact(tracking.uri)!r} cannot be opened ({type(e).__name__}: "
            f"{redact(str(e).splitlines()[0][:200])}); "
            "use e.g. tracking.uri=sqlite:///$PWD/mlflow.db or an http(s):// tracking server"
        ) from None


def close_orphaned_runs(experiment_id: str) -> list[str]:
    """Close as KILLED the experiment's RUNNING runs whose process, on this host, is gone (a
    SIGKILL or a crash runs no cleanup); every job does this as it starts. Returns their ids."""
    client = mlflow.MlflowClient()
    closed = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        if processes.owner_gone(run.data.tags):
            client.set_tag(run.info.run_id, "error", "its process (host {host}, pid {pid}) is gone; closed by a later "
                           "run".format(**run.data.tags))
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("run %s was left RUNNING by a process that is gone: closed as KILLED", run.info.run_id)
            closed.append(run.info.run_id)
    return closed


BASELINE_PANEL = "baseline_panel.json"
VERDICT_PREFIX = "verdict/"  # an adapter's verdict against the strongest baseline, recorded after its sweep
                             # (analysis/verdict.py): verdict/<task>/<metric>/diff, ...


def log_baseline_choice(best, panel: list[dict], demonstrations: list, dev_size: int) -> None:
    """method=strongest_baseline: the variant chosen on the development slice (tags `baseline.*`,
    and in the run name), the whole panel (`baseline_panel.json`: every variant's development
    score, where the race dropped it, its test score when the oracle ran) and the demonstrations
    the choice was made and reported with."""
    tags = {"baseline.variant": best.label(), "baseline.template": best.template,
            "baseline.num_fewshot": str(best.num_fewshot), "baseline.fewshot_sampler": best.fewshot_sampler,
            "baseline.calibrate": str(best.calibrate).lower(), "mlflow.runName": f"strongest_baseline={best.label()}",
            "baseline.reproduce": " ".join([*best.overrides(), f"data.dev_size={dev_size}"])}  # (the pool of draws)
    with atomic_write():
        mlflow.set_tags(tags)
        mlflow.log_dict({"chosen": best.label(), "variants": panel, "demonstrations": demonstrations}, BASELINE_PANEL)


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as `a.b.c -> value` (MLflow params are flat strings)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = redact(json.dumps(node) if isinstance(node, list) else str(node))

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the project checkout; ('unknown', True) outside git."""
    def git(*args):
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, check=True)
        return done.stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def installed_packages() -> str:
    """`pip freeze`-style list, read from package metadata (no subprocess)."""
    dists = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return "\n".join(f"{n}=={v}" for n, v in sorted(dists.items()) if n) + "\n"


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    with atomic_write():
        mlflow.log_metrics(metrics, step=step)


def set_tags(tags: dict[str, str]) -> None:
    with atomic_write():
        mlflow.set_tags(redacted(tags))


def redacted(tags: dict) -> dict[str, str]:
    """Tag values as strings with credentials masked (a user's `tracking.tags` may hold a URL)."""
    return {k: redact(str(v)) for k, v in tags.items()}


def _close(run, status: str, tags: dict[str, str], traceback_text: str | None = None) -> None:
    """End `run` with `status`, even when the interruption left the fluent client mid-call
    (a signal can land inside an MLflow write): fall back to a fresh client, then try once more."""
    with atomic_write():
        _close_now(run, status, tags, traceback_text)


def _close_now(run, status: str, tags: dict[str, str], traceback_text: str | None) -> None:
    run_id = run.info.run_id
    for attempt in range(3):
        try:
            client = mlflow.MlflowClient()
            for k, v in redacted(tags).items():
                client.set_tag(run_id, k, v)
            if traceback_text:
                client.log_text(run_id, redact(traceback_text), "traceback.txt")
            client.set_terminated(run_id, status)
            break
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.5)
    if mlflow.active_run() and mlflow.active_run().info.run_id == run_id:
        mlflow.end_run(status)


@contextmanager
def mlflow_run(experiment_id: str, name: str, tags: dict[str, str], resume_run_id: str | None = None):
    """An MLflow run that ends FINISHED, FAILED (with `traceback.txt`), or KILLED when
    interrupted (Ctrl-C, SIGTERM) or pruned by Optuna (tag `optuna.state=PRUNED`).
    `resume_run_id`: reopen that run (a job that continues where a killed one stopped)."""
    with atomic_write():
        if resume_run_id:
            run = mlflow.start_run(run_id=resume_run_id, tags=redacted(tags))
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=redacted(tags))
    in_trial = "optuna.trial_number" in tags
    trial_failed = {"optuna.state": "FAIL"} if in_trial else {}
    signals_before = signals_received()
    try:
        yield run
    except TrialPruned:
        _close(run, "KILLED", {"optuna.state": "PRUNED"})
        raise
    except BaseException as e:
        if interrupted(e, signals_before):
            _close(run, "KILLED", {"error": "interrupted"} | trial_failed)
            raise
        _close(run, "FAILED", {"error": f"{type(e).__name__}: {e}"[:5000]} | trial_failed, traceback.format_exc())
        raise
    else:
        _close(run, "FINISHED", {"optuna.state": "COMPLETE"} if in_trial else {})


def start_tags(cfg: DictConfig, sweep_id: str, trial_tags: dict[str, str]) -> dict[str, str]:
    commit, dirty = git_state()
    extra = {str(k): str(v) for k, v in (cfg.tracking.get("tags") or {}).items()}
    return extra | trial_tags | {
        "method": cfg.method.name,
        "stage": cfg.stage.name,
        "model": cfg.model.name,
        "tasks": ",".join(cfg.eval.tasks),
        "sweep_id": sweep_id,
        "seed": str(cfg.seed),
        "world_size": str(world_size()),  # training processes (DDP/FSDP/DeepSpeed); 1 without a launcher
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    } | processes.owner_tags()


def log_input(dataset, context: str, attempts: int = 3) -> None:
    """mlflow.log_input, retried: two runs logging the same new dataset at once race to insert it,
    and the tracking server answers the loser with a unique-constraint error (`dataset_pk`); on
    the next attempt the dataset exists and only the run's link to it is written."""
    for attempt in range(attempts):
        try:
            return mlflow.log_input(dataset, context=context)
        except mlflow.exceptions.MlflowException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def log_inputs(cfg: DictConfig, files: list[Path], datasets: list[tuple[str, Path, str]] = ()) -> None:
    """Resolved config (params + YAML), command line, installed packages, data file hashes, and
    the training and evaluation data as MLflow dataset inputs (name, digest, source)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    hashes = {str(f): sha256(f) for f in {*files, *(path for _, path, _ in datasets)}}  # read before the write
    with warnings.catch_warnings():  # ("can be interpreted in multiple ways": it is a local file either way)
        warnings.simplefilter("ignore")
        inputs = [(MetaDataset(resolve_dataset_source(str(Path(path).resolve())), name=name,
                               digest=hashes[str(path)][:8]), context) for name, path, context in datasets]
    with atomic_write():
        for dataset, context in inputs:
            log_input(dataset, context)
        mlflow.log_params(flat_params(cfg))
        mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        mlflow.log_text(redact(shlex.join([sys.executable, *sys.argv])) + "\n", "command.txt")
        mlflow.log_text(installed_packages(), "requirements-freeze.txt")
        mlflow.log_dict(hashes, "data_sha256.json")


SAMPLE_REPLIES = 100  # generated replies per task shown in the run's `sample_replies.json` table


def sample_replies(results: dict) -> dict[str, list] | None:
    """The generation tasks' replies as table columns (task, instruction, input, reference, reply,
    and each per-example score), the first SAMPLE_REPLIES of each task; None when there are none."""
    rows = []
    for task, samples in (results.get("samples") or {}).items():
        for sample in samples[:SAMPLE_REPLIES]:
            reply = (sample.get("filtered_resps") or [None])[0]
            if not isinstance(reply, str):  # (a choice task: log-likelihoods, not text)
                break
            doc = sample.get("doc") or {}
            scores = {m: sample[m] for m in sample.get("metrics", []) if isinstance(sample.get(m), (int, float))}
            rows.append({"task": task, "instruction": str(doc.get("instruction", "")),
                         "input": str(doc.get("input", "")), "reference": str(sample.get("target", "")),
                         "reply": reply, **scores})
    if not rows:
        return None
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return {c: [row.get(c) for row in rows] for c in columns}


def log_eval_results(results: dict) -> None:
    """lm-eval's results JSON, per-sample predictions included, and the generated replies as a
    table (the MLflow UI's artifact view and `mlflow.load_table`)."""
    from lm_eval.utils import handle_non_serializable

    text = json.dumps(results, default=handle_non_serializable, indent=1)
    replies = sample_replies(results)
    with atomic_write():
        if replies:
            mlflow.log_table(replies, artifact_file="sample_replies.json")
        mlflow.log_text(text, "lm_eval_results.json")
        # what the baseline cache checks before it reuses these results (sweep/scoring/baseline_cache.py)
        mlflow.set_tag(RESULTS_HASH_TAG, hashlib.sha256(text.encode()).hexdigest())


def log_table(columns: dict[str, list], name: str) -> None:
    """A table of per-example values (the MLflow UI's artifact view, `mlflow.load_table`)."""
    with atomic_write():
        mlflow.log_table(columns, artifact_file=name)


def log_figure(figure, name: str) -> None:
    import matplotlib.pyplot as plt

    with atomic_write():
        mlflow.log_figure(figure, name)
    plt.close(figure)


def log_adapter(model) -> None:
    """The trained adapter as safetensors (peft's default format; never pickle), with the sha256 of
    its weights as a tag: a later stage that starts from this run checks its download against it."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER])
        with atomic_write():
            mlflow.log_artifacts(tmp, ADAPTER_DIR)
            mlflow.set_tag(ADAPTER_SHA_TAG, sha256(Path(tmp) / ADAPTER_WEIGHTS))
