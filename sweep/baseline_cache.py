"""Baseline cache: the prompt-only and in-context scores of a model are computed once.

A baseline's scores depend only on the model, the tasks (template and data), the prompting (k,
sampler, draws, calibration; for method=strongest_baseline the variants searched), the examples
scored, the seed, lm-eval's version and the harness's own scoring code, never on what a sweep trains. A 4-shot pass of a 135M
model over 1,000 examples takes minutes on 2 cores, and every sweep wants it beside its runs, so
a finished baseline run is found by the key of those inputs (tag `baseline_key`) and its scores
are logged again in a new run, tagged `cached=true` and `cached_from=<source run>`, with the same
per-example predictions (so paired tests still work). MLflow is the cache: nothing is stored
elsewhere, and deleting the source run ends the reuse. `eval.cache=false` always scores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from sweep import tracking
from sweep.data import sha256

REUSED_ARTIFACTS = ("lm_eval_results.json", "baseline_panel.json")
# The harness's own scoring code: a change to any of these scores differently, so it is in the key.
SCORING_CODE = ("evaluate.py", "fewshot.py", "calibration.py", "prefix_cache.py", "baselines.py")


def cache_key(cfg: DictConfig, task_manager, files: list[Path]) -> str:
    """sha256 of everything a baseline's scores depend on."""
    from sweep.evaluate import Prompting, variant_name

    model = OmegaConf.to_container(cfg.model, resolve=True)
    if model.get("gguf") and not model.get("name_or_path"):
        package = model["gguf"]["package"].replace("_", "-")
        model["gguf"]["version"] = importlib.metadata.version(package)
    search = cfg.method.get("search")
    templates = list(search.template) if search is not None else [cfg.eval.template]
    inputs = {
        "model": model,
        "tasks": {v: task_manager.task_index[v].cfg for v in  # templates, splits, metrics
                  (variant_name(t, template) for template in templates for t in cfg.eval.tasks)},
        "data": {Path(f).name + f"@{i}": sha256(f) for i, f in enumerate(sorted(files))},
        "prompting": dataclasses.asdict(Prompting.from_config(cfg)),
        "search": OmegaConf.to_container(search) if search is not None else None,
        "limit": cfg.eval.limit,
        "seed": cfg.seed,
        "lm_eval": importlib.metadata.version("lm-eval"),
        "scoring_code": {name: sha256(Path(__file__).parent / name) for name in SCORING_CODE},
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
    """Log the source run's scores (each draw's too), predictions, development panel and chosen
    variant into the active run; return the scores."""
    metrics = {k: v for k, v in source.data.metrics.items() if "/" in k or k in ("trainable_params", "total_params",
                                                                                  "model_memory_mb")}
    client, run_id = mlflow.MlflowClient(), source.info.run_id
    tracking.log_metrics({k: v for k, v in metrics.items() if not k.startswith("draw/")})
    for key in [k for k in metrics if k.startswith("draw/")]:
        for point in client.get_metric_history(run_id, key):
            tracking.log_metrics({key: point.value}, step=point.step)
    with tempfile.TemporaryDirectory() as tmp:
        for name in [a.path for a in client.list_artifacts(run_id) if a.path in REUSED_ARTIFACTS]:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=tmp)
            with tracking.atomic_write():
                mlflow.log_artifact(path)
    experiment = source.info.experiment_id
    chosen = {k: v for k, v in source.data.tags.items() if k.startswith("baseline.") or
              (k == "mlflow.runName" and "baseline.variant" in source.data.tags)}
    tracking.set_tags(chosen | {
        "cached": "true", "cached_from": run_id,
        "mlflow.note.content": f"Scores reused from run [{run_id}]"
                               f"(#/experiments/{experiment}/runs/{run_id}) (baseline cache).",
    })
    return metrics
