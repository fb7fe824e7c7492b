"""One Hydra job, start to finish: config -> build -> train -> evaluate -> record."""

from __future__ import annotations

import logging
import tempfile
import traceback

from omegaconf import DictConfig
from optuna.exceptions import TrialPruned
from transformers import set_seed

from sweep import tracking
from sweep.config import ConfigError, validate
from sweep.data import splits
from sweep.data.examples import dataset_inputs
from sweep.pipeline.build import build, generated_data, load_project_tasks, task_files
from sweep.pipeline.naming import run_name
from sweep.pipeline.score import intermediate_scoring, score_and_record
from sweep.rlhf import alignment, lineage, preference, reference_replies
from sweep.runtime import distributed, interrupts, memory
from sweep.runtime.hydra_job import (
    JobOutcome,
    is_multirun,
    report_bad_input,
    sweep_id,
    use_all_cores,
)
from sweep.runtime.secrets import guard_output, redact
from sweep.scoring import baseline_cache, baselines
from sweep.scoring.results import is_task_metric
from sweep.study import trials
from sweep.study.search import prunes
from sweep.training.methods import count_parameters
from sweep.training.models import base_model_identity, memory_footprint_mb
from sweep.training.sft import model_flops_utilization, train

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> JobOutcome:
    """Run one job. In a multirun a failure is recorded and reported, and the sweep goes on;
    a single run exits non-zero (2 for bad input, with a one-line message)."""
    guard_output()  # (again: a launcher's worker process may not have come through sweep.py)
    interrupts.install_signal_handlers()
    memory.map_large_blocks()
    rss_at_start = memory.resident_mb()  # what the jobs before this one in the process left behind
    memory.reset_peak()
    signals_before = interrupts.signals_received()
    try:
        return execute(cfg, rss_at_start)
    except ConfigError as e:
        report_bad_input(e, single_run=not is_multirun())
        return JobOutcome("INVALID", sweep_id(cfg), error=redact(str(e)))
    except TrialPruned as e:
        log.info("pruned: %s", e)
        return JobOutcome("PRUNED", sweep_id(cfg))
    except Exception as e:
        if interrupts.interrupted(e, signals_before):  # stopped, not failed: the sweep stops too
            raise interrupts.interruption() from e
        if not is_multirun():
            raise
        log.error("job failed (its MLflow run, if it started, is FAILED with this traceback):\n%s",
                  redact(traceback.format_exc()))
        return JobOutcome("FAILED", sweep_id(cfg), error=redact(f"{type(e).__name__}: {e}"))
    finally:
        memory.release()  # the job's model, trainer and lm-eval objects are unreachable by now


def reuse_baseline(cfg, experiment_id: str, name: str, tags: dict, source, files, datasets,
                   start_memory: dict) -> JobOutcome:
    with tracking.mlflow_run(experiment_id, name, tags) as run:
        tracking.log_inputs(cfg, files, datasets)
        used = start_memory | memory.peak_mb()
        tracking.log_metrics(used)
        metrics = baseline_cache.reuse(source) | used
        log.info("%s: reusing the scores of run %s (baseline cache; eval.cache=false scores again): %s", name,
                 source.info.run_id, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if is_task_metric(k)))
        return JobOutcome("FINISHED", sweep_id(cfg), run.info.run_id, metrics)


def execute(cfg: DictConfig, rss_at_start: float | None = None) -> JobOutcome:
    validate(cfg)
    if distributed.world_size() > 1 and prunes(cfg.trial.pruner):
        raise ConfigError(f"hydra.sweeper.pruner={cfg.trial.pruner} with {distributed.world_size()} training "
                          "processes: a pruned main process would leave the others waiting; use pruner=none")
    if distributed.world_size() > 1 and cfg.stage.name != "sft":
        raise ConfigError(f"stage={cfg.stage.name} with {distributed.world_size()} training processes: the "
                          "preference and RL stages run in one process (one GPU or the CPU); launch without accelerate")
    if not distributed.is_main():
        return train_share(cfg)
    loaded = load_project_tasks(cfg)  # unknown tasks or templates, bad data files: refused before a store exists
    generated = generated_data(cfg)   # (and generated data that cannot be found)
    slices = splits.dev_slices(loaded[1], cfg.data.dev_size)  # (and a development slice a split cannot give)
    if cfg.method.name == "strongest_baseline":
        baselines.check_search(cfg, loaded[0])
    if cfg.method.trains and cfg.stage.name != "sft":  # (preference pairs, or prompts, to train on)
        preference.split_docs(loaded[1][cfg.data.task], cfg.data.train_split, cfg.stage.name)
    identity = base_model_identity(cfg.model, cfg.seed)
    ancestry = lineage.resolve(cfg, sweep_id(cfg), identity, is_multirun())  # (runs to start from, or judge with)
    experiment_id = tracking.open_experiment(cfg.tracking)
    tracking.close_orphaned_runs(experiment_id)
    use_all_cores()
    set_seed(cfg.seed)
    trial = trials.attach(cfg)
    name = run_name(cfg)
    start_memory = {"rss_at_start_mb": rss_at_start} if rss_at_start is not None else {}
    tags = tracking.start_tags(cfg, sweep_id(cfg), trial.tags() if trial else {}) | {"base_model": identity} | \
        ancestry.tags()
    if not cfg.method.trains:  # a baseline: scored once per model, tasks, prompting, limit, seed, lm-eval (and judge)
        files = task_files(loaded[1])
        key = baseline_cache.cache_key(cfg, loaded[0], files, ancestry.judge)
        source = baseline_cache.find_source(key) if cfg.eval.cache else None
        if source is not None:
            return reuse_baseline(cfg, experiment_id, name, tags | {"baseline_key": key}, source, files,
                                  dataset_inputs(cfg, loaded[1]), start_memory)
        tags |= {"baseline_key": key, "cached": "false"}
    built = build(cfg, loaded, generated, ancestry, slices)
    trainable, total = count_parameters(built.model)

    # The folder the base model loaded from: what an adapter's adapter_config.json names.
    tags["base_model_path"] = str(getattr(built.model, "name_or_path", "") or "")
    with tracking.mlflow_run(experiment_id, name, tags) as run:
        # Each step's results are logged as soon as they exist: a later failure keeps them.
        tracking.log_inputs(cfg, built.files, built.datasets)
        metrics = {"trainable_params": trainable, "total_params": total,
                   "model_memory_mb": memory_footprint_mb(built.model)} | start_memory
        tracking.log_metrics(metrics)
        if cfg.method.trains:
            metrics |= train_and_record(cfg, built, total, trial)
        has_reference = ancestry.judge is not None and cfg.method.peft and cfg.eval.enabled  # (an adapter to disable)
        key = (reference_replies.cache_key(cfg, loaded[0], task_files(loaded[1]), ancestry.policy)
               if has_reference else None)
        metrics |= score_and_record(cfg, built, name, key)
        return JobOutcome("FINISHED", sweep_id(cfg), run.info.run_id, metrics)


def train_share(cfg: DictConfig) -> JobOutcome:
    """A process other than the main one of a multi-process job: its share of the training
    (gradients are averaged with the main process's), nothing recorded, scored or saved."""
    use_all_cores()
    set_seed(cfg.seed)
    if cfg.method.trains:
        built = build(cfg)
        with tempfile.TemporaryDirectory(prefix="trainer-") as out:
            train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, out,
                  fail_at_step=cfg.debug.fail_at_step)
    return JobOutcome("FINISHED", sweep_id(cfg))


def train_and_record(cfg: DictConfig, built, total_params: int, trial) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="trainer-") as out:
        if cfg.stage.name == "sft":
            result = train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, out,
                           callbacks=intermediate_scoring(cfg, built, trial), fail_at_step=cfg.debug.fail_at_step,
                           prune_divergence=trial is not None and trial.pruning)
        else:
            result = alignment.train_stage(cfg, built.model, built.tokenizer, built.train_dataset, out, built.judge)
    trained = {"train_seconds": result.seconds, "train_tokens": result.tokens,
               "train_tokens_per_second": result.tokens_per_second, "train_examples": len(built.train_dataset)}
    trained |= {f"train_{k}": v for k, v in memory.peak_mb().items()}  # (the build's and training's: scoring's apart)
    if result.rollout_seconds:
        trained |= {"rollout_tokens": result.rollout_tokens,
                    "rollout_tokens_per_second": result.rollout_tokens / result.rollout_seconds}
    mfu = model_flops_utilization(total_params, result.tokens, result.seconds)
    trained |= {"mfu": mfu} if mfu is not None else {}
    tracking.log_metrics(trained)
    tracking.set_tags({"train_bf16": str(result.bf16).lower(), "train_optim": result.optim,
                       "torch_threads": str(result.threads)})
    if cfg.method.peft and cfg.tracking.log_adapter:
        tracking.log_adapter(built.model)
    return trained
