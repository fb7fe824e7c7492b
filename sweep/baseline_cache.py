"""Baseline cache: the prompt-only and in-context scores of a model are computed once.

A baseline's scores depend only on the model, the tasks (template and data), k, the examples
scored, the seed and lm-eval's version, never on what a sweep trains. A 4-shot pass of a 135M
model over 1,000 examples takes minutes on 2 cores, and every sweep wants it beside its runs, so
a finished baseline run is found by the key of those inputs (tag `baseline_key`) and its scores
are logged again in a new run, tagged `cached=true` and `cached_from=<source run>`, with the same
per-example predictions (so paired tests still work). MLflow is the cache: nothing is stored
elsewhere, and deleting the source run ends the reuse. `eval.cache=false` always scores.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from sweep import tracking
from sweep.data import sha256


def cache_key(cfg: DictConfig, task_manager, files: list[Path]) -> str:
    """sha256 of everything a baseline's scores depend on."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model.get("gguf") and not model.get("name_or_path"):
        package = model["gguf"]["package"].replace("_", "-")
        model["gguf"]["version"] = importlib.metadata.version(package)
    inputs = {
        "model": model,
        "tasks": {t: task_manager.task_index[t].cfg for t in cfg.eval.tasks},  # template, splits, metrics
        "data": {Path(f).name + f"@{i}": sha256(f) for i, f in enumerate(sorted(files))},
        "num_fewshot": cfg.method.num_fewshot,
        "limit": cfg.eval.limit,
        "seed": cfg.seed,
        "lm_eval": importlib.metadata.version("lm-eval"),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def find_source(key: str):
    """The latest finished, freshly scored run with this key, in any experiment of the store."""
    runs = mlflow.search_runs(
        search_all_experiments=True, order_by=["start_time DESC"], max_results=1, output_format="list",
        filter_string=f"tags.baseline_key = '{key}' and tags.cached = 'false' and attributes.status = 'FINISHED'",
    )
    return runs[0] if runs else None


def reuse(source) -> dict[str, float]:
    """Log the source run's scores and predictions into the active run; return the scores."""
    metrics = {k: v for k, v in source.data.metrics.items() if "/" in k or k in ("trainable_params", "total_params",
                                                                                  "model_memory_mb")}
    tracking.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=source.info.run_id, artifact_path="lm_eval_results.json",
                                                   dst_path=tmp)
        with tracking.atomic_write():
            mlflow.log_artifact(path)
    experiment = source.info.experiment_id
    tracking.set_tags({
        "cached": "true", "cached_from": source.info.run_id,
        "mlflow.note.content": f"Scores reused from run [{source.info.run_id}]"
                               f"(#/experiments/{experiment}/runs/{source.info.run_id}) (baseline cache).",
    })
    return metrics
