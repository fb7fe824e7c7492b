"""Baseline cache: the prompt-only and in-context scores of a model are computed once.

A baseline's scores depend only on the model, the tasks (template and data), the prompting (k,
sampler, draws, calibration; for method=strongest_baseline the variants searched), the examples
scored, the seed, the scoring libraries and the harness's own scoring code, never on what a
sweep trains. A 4-shot pass of a 135M model over 1,000 examples takes minutes on 2 cores, and
every sweep wants it beside its runs, so a finished baseline run is found by the key of those
inputs (tag `baseline_key`: contents, never paths) and its scores
are logged again in a new run, tagged `cached=true` and `cached_from=<source run>`, with the same
per-example predictions (so paired tests still work). The scores reused are those of the source's
`baseline_scores.json`, kept only when it hashes to the sha256 the run recorded as it finished,
never its metric rows: anyone on a team can edit those in a shared store. A judged baseline (eval.judge_run_id) has the
reward model's adapter in its key and reuses its judged replies too. MLflow is the cache: nothing is stored
elsewhere, and deleting the source run ends the reuse. `eval.cache=false` always scores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from omegaconf import DictConfig

from sweep.runtime.files import module_digest, sha256
from sweep.scoring.evaluate import Prompting
from sweep.scoring.results import QUERY_SECONDS, QUERY_TOKENS
from sweep.tracking import records, reuse
from sweep.tracking.untrusted import equals
from sweep.vocabulary import (
    BASELINE_KEY_TAG,
    BASELINE_PANEL,
    BASELINE_TAG_PREFIX,
    BASELINE_VARIANT,
    CACHED,
    CACHED_FROM,
    DEV_JUDGED_REPLIES,
    JUDGED_REPLIES,
    NOTE,
    RESULTS,
    RESULTS_HASH_TAG,
    RUN_NAME,
    SCORES,
    SCORES_HASH_TAG,
    tag_field,
)

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("trainable_params", "total_params", "model_memory_mb", QUERY_TOKENS, QUERY_SECONDS)  # reused beside
# the <task>/<metric> ones (a query's cost is the source's: the same prompts, measured once)
REUSED_ARTIFACTS = (RESULTS, SCORES, BASELINE_PANEL, JUDGED_REPLIES, DEV_JUDGED_REPLIES)
# The harness's own scoring code: a change to any of these scores differently, so it is in the key.
SCORING_CODE = tuple(f"sweep.{m}" for m in (
    "scoring.evaluate", "scoring.registry", "scoring.results", "scoring.fewshot", "scoring.calibration",
    "scoring.prefix_cache", "scoring.generation", "scoring.batching", "scoring.baselines", "scoring.race",
    "data.splits", "pipeline.score"))
JUDGING_CODE = "sweep.stages.judging"  # the code that judges generated replies (a judged baseline's key holds it too)
LIBRARIES = ("lm-eval", "transformers", "torch")  # whose versions score (a new release may change numerics)


@dataclass(frozen=True)
class Settings:
    """The settings a baseline's scores depend on (the pipeline gathers them from the job's config)."""
    model: DictConfig          # the model group
    model_cache: str           # paths.cache: where a model built from its config lies (not itself in the key)
    tasks: list[str]           # eval.tasks
    templates: list[str]       # eval.template, or the templates method=strongest_baseline searches
    prompting: Prompting
    search: dict | None        # method.search (strongest_baseline), as plain containers
    limit: int | None          # eval.limit
    dev_size: int              # data.dev_size: the development slice's scores, and the pool of demonstrations
    seed: int
    generation: dict           # eval.generation's keys that are set (decoding of generation tasks)
    pool: object = None        # splits.Pool: the labelled examples demonstrations come from (eval.fewshot_pool)
    instruction: str | None = None  # eval.instruction: the task instruction in place of the template's


def cache_key(settings: Settings, task_manager, files: list[Path], judge=None) -> str:
    """sha256 of everything a baseline's scores depend on, by content: where the checkout, the
    cache or the model lie does not enter it (two clones share their baselines). `judge`: the
    reward model (a lineage.Ancestor) that also scores the replies, if any."""
    from sweep.scoring.registry import variant_name
    from sweep.training.models import model_source, weights_digest

    s, model = settings, settings.model
    variants = [variant_name(t, template) for template in s.templates for t in s.tasks]
    inputs = {
        "model": {"weights": weights_digest(model_source(model, s.model_cache, s.seed)),
                  **{k: model[k] for k in ("dtype", "attn_implementation", "trust_remote_code")}},
        "tasks": {v: task_content(task_manager.task_index[v].cfg) for v in variants},  # templates, splits, metrics
        "data": {Path(f).name + f"@{i}": sha256(f) for i, f in enumerate(sorted(files))},
        "prompting": dataclasses.asdict(s.prompting),
        "search": s.search,
        "limit": s.limit,
        "dev_size": s.dev_size,
        "seed": s.seed,
        "versions": {name: importlib.metadata.version(name) for name in LIBRARIES},
        "scoring_code": {name: module_digest(name) for name in SCORING_CODE},
    }
    generation = s.generation
    if s.pool is not None and s.pool.size:  # (only the trained examples; absent for the whole split, as before)
        inputs["pool"] = dataclasses.asdict(s.pool)
    if generation:  # (decoding of generation tasks; absent when unset, so keys of the tasks' own settings hold)
        inputs["generation"] = generation
    if s.instruction is not None:  # (set on the loaded tasks, not in the YAML `tasks` hashes; absent when unset)
        inputs["instruction"] = s.instruction
    if judge is not None:  # its adapter, by content, and the code that judges
        inputs["judge"] = judge.content()
        inputs["judging_code"] = module_digest(JUDGING_CODE)
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def task_content(task_cfg) -> dict:
    """A task's config with each `!function` reference (lm-eval stores `<folder>/<module>.<name>`)
    replaced by its module's file name, function name and source hash: editing the hook changes
    the key, moving the checkout does not."""
    def content(value):
        if isinstance(value, dict):
            return {k: content(v) for k, v in value.items()}
        if isinstance(value, list):
            return [content(v) for v in value]
        if isinstance(value, str) and "/" in value and "." in value:
            module, _, name = value.rpartition(".")
            source = Path(module + ".py")
            if source.is_file():
                return f"!function {source.name}:{name}@{sha256(source)}"
        return value
    return content(dict(task_cfg))


def scored_metrics(metrics: dict) -> dict[str, float]:
    """The metrics a reuse carries over: the tasks' scores (each draw's too) and the model's size."""
    return {k: v for k, v in metrics.items() if "/" in k or k in SUMMARY_METRICS}


def record_scores() -> None:
    """Write the active run's scores, each draw's history included, as SCORES with its sha256 (tag
    SCORES_HASH_TAG): what a later reuse reads (a freshly scored baseline does this last)."""
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    metrics = scored_metrics(client.get_run(run_id).data.metrics)
    draws = {k: [[p.step, p.value] for p in client.get_metric_history(run_id, k)] for k in metrics
             if k.startswith("draw/")}
    text = json.dumps({"metrics": metrics, "draws": draws}, sort_keys=True)
    def write():
        mlflow.log_text(text, SCORES)
        mlflow.set_tag(SCORES_HASH_TAG, hashlib.sha256(text.encode()).hexdigest())
    records.stored("recording the baseline's scores", write)


def read_scores(path: Path) -> dict | None:
    """The scores file's content if it has the shape record_scores writes (names to finite numbers,
    draws as [step, value] pairs), else None."""
    try:
        data = json.loads(path.read_text())
        metrics = {str(k): float(v) for k, v in data["metrics"].items()}
        draws = {str(k): [(int(s), float(v)) for s, v in points] for k, points in data["draws"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    finite = all(math.isfinite(v) for v in [*metrics.values(), *(v for ps in draws.values() for _, v in ps)])
    return {"metrics": metrics, "draws": draws} if finite else None


def find_source(key: str):
    """(run, scores): the latest finished, freshly scored run with this key, in any experiment of
    the store, whose results and scores files still hash to what the run recorded; None if none."""
    for run in reuse.finished_runs(BASELINE_KEY_TAG, key, conditions=equals(tag_field(CACHED), "false")):
        with reuse.verified_download(run, RESULTS, RESULTS_HASH_TAG) as results, \
                reuse.verified_download(run, SCORES, SCORES_HASH_TAG) as scores:
            found = read_scores(scores) if results is not None and scores is not None else None
            if found is not None:
                return run, found
        log.warning("baseline cache: run %s has this key but its results or scores do not hash to what it "
                    "recorded; not reused", run.info.run_id)
    return None


def log_reused(source, scores: dict) -> dict[str, float]:
    """Log the verified scores (each draw's too), and the source run's predictions, development
    panel and chosen variant, into the active run; return the scores. The files with a hash tag
    (results, scores) are copied only as they hash to it (tracking/reuse.py), and fail the reuse
    otherwise; the panel and the judged replies have none: they decide nothing, and every reader
    takes them as store text (analysis/panel.py keeps a panel row only as far as its fields' types)."""
    metrics = scores["metrics"]
    records.log_metrics({k: v for k, v in metrics.items() if not k.startswith("draw/")})
    for key, points in scores["draws"].items():
        for step, value in points:
            records.log_metrics({key: value}, step=step)
    client, run_id = mlflow.MlflowClient(), source.info.run_id
    for name in [a.path for a in client.list_artifacts(run_id) if a.path in REUSED_ARTIFACTS]:
        with copied(source, name) as path:
            records.stored(f"logging {name}", lambda path=path: mlflow.log_artifact(str(path)))
    experiment = source.info.experiment_id
    chosen = {k: v for k, v in source.data.tags.items() if k.startswith(BASELINE_TAG_PREFIX) or
              (k == RUN_NAME and BASELINE_VARIANT in source.data.tags)}
    records.set_tags(chosen | {
        CACHED: "true", CACHED_FROM: run_id,
        NOTE: f"Scores reused from run [{run_id}](#/experiments/{experiment}/runs/{run_id}) (baseline cache).",
    })
    return metrics


HASHED = {RESULTS: RESULTS_HASH_TAG, SCORES: SCORES_HASH_TAG}  # the reused files a hash tag covers


@contextlib.contextmanager
def copied(source, name: str):
    """The source run's artifact `name` in a temporary folder: verified against its hash tag where it
    has one (a changed file ends the reuse: ValueError), as it is otherwise."""
    if name in HASHED:
        with reuse.verified_download(source, name, HASHED[name]) as path:
            if path is None:
                raise ValueError(f"{name} of run {source.info.run_id} no longer hashes to its {HASHED[name]}")
            yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(mlflow.artifacts.download_artifacts(run_id=source.info.run_id, artifact_path=name, dst_path=tmp))
