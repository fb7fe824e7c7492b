"""What a run records: its inputs (config, command, packages, data), metrics, tags, lm-eval's results,
tables, figures and its adapter; every write is shielded from a signal landing mid-write and waits
for a tracking server that does not answer (sweep/tracking/outage.py)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import mlflow
from omegaconf import OmegaConf

from sweep.runtime.files import sha256
from sweep.runtime.interrupts import atomic_write
from sweep.runtime.retry import first_line, retry
from sweep.runtime.secrets import redact
from sweep.tracking import outage
from sweep.vocabulary import (
    ADAPTER_DIR,
    ADAPTER_SHA_TAG,
    BASELINE_CALIBRATE,
    BASELINE_NUM_FEWSHOT,
    BASELINE_PANEL,
    BASELINE_REPRODUCE,
    BASELINE_SAMPLER,
    BASELINE_SEARCH,
    BASELINE_TEMPLATE,
    BASELINE_VARIANT,
    RESULTS_HASH_TAG,
    RUN_NAME,
)

TRAINED_ADAPTER = "default"  # peft's name of the adapter a job trains (TRL may add a frozen copy, "ref")
log = logging.getLogger(__name__)


def stored(what: str, write, seconds: float | None = None):
    """`write()` shielded from a signal landing mid-write, and tried again while the tracking server
    cannot be reached (for up to `seconds`: the active run's tracking.outage_seconds by default)."""
    def attempt():
        with atomic_write():
            return write()
    return outage.patiently(attempt, what, seconds)


def log_baseline_choice(best, panel: list[dict], demonstrations: list, dev_size: int, name_suffix: str = "",
                        space: str = "") -> None:
    """method=strongest_baseline: the variant chosen on the development slice (tags `baseline.*`,
    and in the run name), what it was chosen among (`baseline.search`: a claim names it), the whole
    panel (`baseline_panel.json`: every variant's development score, where the race dropped it, its
    test score when the oracle ran) and the demonstrations the choice was made and reported with."""
    tags = {BASELINE_VARIANT: best.label(), BASELINE_TEMPLATE: best.template,
            BASELINE_NUM_FEWSHOT: str(best.num_fewshot), BASELINE_SAMPLER: best.fewshot_sampler,
            BASELINE_CALIBRATE: str(best.calibrate).lower(),
            RUN_NAME: f"strongest_baseline={best.label()}{name_suffix}",
            BASELINE_REPRODUCE: " ".join([*best.overrides(), f"data.dev_size={dev_size}"]),  # (the pool of draws)
            **({BASELINE_SEARCH: space} if space else {})}
    def write():
        mlflow.set_tags(tags)
        mlflow.log_dict({"chosen": best.label(), "variants": panel, "demonstrations": demonstrations}, BASELINE_PANEL)
    stored("recording the chosen baseline", write)


def flat_params(config: dict) -> dict[str, str]:
    """A resolved config (as plain containers) as `a.b.c -> value` (MLflow params are flat strings)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = redact(json.dumps(node) if isinstance(node, list) else str(node))

    walk(config, "")
    return out


@functools.cache
def installed_packages() -> str:
    """`pip freeze`-style list, read from package metadata (no subprocess), once per process (0.1-0.2 s
    of reading ~180 METADATA files; the fork server reads it before it forks): what a process runs is
    what it imported, so a package changed on disk after that would not be what ran anyway."""
    dists = {(d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()}
    return "\n".join(f"{n}=={v}" for n, v in sorted(dists.items()) if n) + "\n"


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    stored("logging metrics", lambda: mlflow.log_metrics(metrics, step=step))


def log_curve(metrics: dict[str, float], step: int) -> None:
    """Step metrics logged while the job computes on (training curves): sent by the run's own thread,
    so the job never waits for the tracking server (outage.CurveSender)."""
    if not outage.hand_to_sender(metrics, step):
        log_metrics(metrics, step)


def set_tags(tags: dict[str, str]) -> None:
    stored("setting tags", lambda: mlflow.set_tags(redacted(tags)))


def redacted(tags: dict) -> dict[str, str]:
    """Tag values as strings with credentials masked (a user's `tracking.tags` may hold a URL)."""
    return {k: redact(str(v)) for k, v in tags.items()}


def log_input(dataset, context: str, seconds: float = 3.0) -> None:
    """mlflow.log_input, tried again for up to `seconds`: two runs logging the same new dataset at
    once race to insert it, and the tracking server answers the loser with a unique-constraint error
    (`dataset_pk`); on the next attempt the dataset exists and only the run's link to it is written."""
    retry(lambda: mlflow.log_input(dataset, context=context), seconds=seconds, first=0.5, who="the tracking server",
          trouble="refused a write", what=f"linking the {context} dataset (another run may insert it at once)",
          transient=lambda e: isinstance(e, mlflow.exceptions.MlflowException), level=logging.DEBUG)


def log_inputs(config: dict, files: list[Path], datasets: list[tuple[str, Path, str]] = ()) -> None:
    """The job's resolved config (`config`, as plain containers: params + YAML), command line,
    installed packages, data file hashes, and the training and evaluation data as MLflow dataset
    inputs (name, digest, source)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    hashes = {str(f): sha256(f) for f in {*files, *(path for _, path, _ in datasets)}}  # read before the write
    with warnings.catch_warnings():  # ("can be interpreted in multiple ways": it is a local file either way)
        warnings.simplefilter("ignore")
        inputs = [(MetaDataset(resolve_dataset_source(str(Path(path).resolve())), name=name,
                               digest=hashes[str(path)][:8]), context) for name, path, context in datasets]
    def write():
        for dataset, context in inputs:
            log_input(dataset, context)
        mlflow.log_params(flat_params(config))
        mlflow.log_text(redact(OmegaConf.to_yaml(config)), "config.yaml")
        mlflow.log_text(redact(shlex.join([sys.executable, *sys.argv])) + "\n", "command.txt")
        mlflow.log_text(installed_packages(), "requirements-freeze.txt")
        mlflow.log_dict(hashes, "data_sha256.json")
    stored("recording the job's inputs", write)


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
    def write():
        if replies:
            mlflow.log_table(replies, artifact_file="sample_replies.json")
        mlflow.log_text(text, "lm_eval_results.json")
        # what the baseline cache checks before it reuses these results (sweep/scoring/baseline_cache.py)
        mlflow.set_tag(RESULTS_HASH_TAG, hashlib.sha256(text.encode()).hexdigest())
    stored("logging lm-eval's results", write)


def log_table(columns: dict[str, list], name: str) -> None:
    """A table of per-example values (the MLflow UI's artifact view, `mlflow.load_table`)."""
    stored(f"logging {name}", lambda: mlflow.log_table(columns, artifact_file=name))


def log_json(value, name: str) -> None:
    stored(f"logging {name}", lambda: mlflow.log_dict(value, name))


def log_figure(figure, name: str) -> None:
    import matplotlib.pyplot as plt

    stored(f"logging {name}", lambda: mlflow.log_figure(figure, name))
    plt.close(figure)


class AdapterNotStored(RuntimeError):
    """The trained adapter could not be uploaded; it is kept on local disk for `make upload`."""


def pending_folder(pending_root: Path, run_id: str) -> Path:
    """Where a run's adapter waits when its upload failed: this machine's, never a path from a store."""
    return Path(pending_root) / run_id / ADAPTER_DIR


def log_adapter(model, pending_root: Path) -> None:
    """The trained adapter as safetensors (peft's default format; never pickle), with the sha256 of
    its folder's manifest as a tag: whatever loads it later checks the whole folder against it.
    Saved to `pending_root` first: if the upload fails (a full or unwritable artifact store, a
    server that refuses), the adapter stays there and AdapterNotStored names the command that
    uploads it; once stored, the local copy is removed."""
    run_id = mlflow.active_run().info.run_id
    folder = pending_folder(pending_root, run_id)
    model.save_pretrained(folder, safe_serialization=True, selected_adapters=[TRAINED_ADAPTER])
    try:
        upload_adapter(folder, run_id)
    except (OSError, mlflow.exceptions.MlflowException) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise AdapterNotStored(f"{reason} while uploading the adapter; it is kept in {folder}: free space (or fix the "
                               f"store) and run `make upload RUN={run_id}`") from None
    shutil.rmtree(folder.parent, ignore_errors=True)


def upload_adapter(folder: Path, run_id: str) -> None:
    """Upload an adapter folder to the run with its manifest, and tag the manifest's sha256 (one hash
    of the folder whole: its config as much as its weights)."""
    from sweep.tracking.reuse import write_manifest

    digest = write_manifest(folder)
    client = mlflow.MlflowClient()

    def write():
        client.log_artifacts(run_id, str(folder), ADAPTER_DIR)
        client.set_tag(run_id, ADAPTER_SHA_TAG, digest)
    stored("uploading the adapter", write)
