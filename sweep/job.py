"""One Hydra job, start to finish: config -> build -> train -> evaluate -> record."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from optuna.exceptions import TrialPruned
from transformers import set_seed

from sweep import (alignment, baseline_cache, baselines, distributed, lineage, memory, preference, reference_replies,
                   splits, tracking, trials)
from sweep.build import build, generated_data, load_project_tasks, task_files
from sweep.config import ConfigError, validate
from sweep.data import dataset_inputs
from sweep.evaluate import is_task_metric
from sweep.methods import count_parameters
from sweep.models import base_model_identity, memory_footprint_mb
from sweep.scoring import intermediate_scoring, score_and_record
from sweep.search import prunes
from sweep.secrets import guard_output, redact
from sweep.train import model_flops_utilization, train

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What a job hands back to the sweeper (and the summary)."""
    status: str                       # FINISHED | PRUNED | FAILED | INVALID
    sweep_id: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def sweep_id(cfg: DictConfig, sweep_dir: str | None = None) -> str:
    """`tracking.sweep_id`, else the date/time folders of Hydra's output dir (the sweep dir in a
    multirun, so every job of one sweep shares it). `sweep_dir`: the sweep's folder, for a caller
    outside the job (whose Hydra runtime is not the job's)."""
    if cfg.tracking.sweep_id:
        return str(cfg.tracking.sweep_id)
    if sweep_dir is not None:
        return sweep_id_of(sweep_dir)
    hc = _hydra()
    if hc is None:
        return time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(hc.runtime.output_dir)
    return sweep_id_of(out.parent if is_multirun() else out)


def sweep_id_of(folder: str | Path) -> str:
    return "_".join(Path(folder).parts[-2:])


def use_all_cores() -> None:
    """Torch's intra-op threads on every core this process may use (torch's default can be lower
    in containers, where it counts the host's physical cores), shared among the job's processes
    on this host; `OMP_NUM_THREADS`, when set, is the user's choice (e.g. several sweeps on one
    machine, or the test suite on two workers) and is kept."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_processes))


def run_job(cfg: DictConfig) -> JobOutcome:
    """Run one job. In a multirun a failure is recorded and reported, and the sweep goes on;
    a single run exits non-zero (2 for bad input, with a one-line message)."""
    guard_output()  # (again: a launcher's worker process may not have come through sweep.py)
    tracking.install_signal_handlers()
    memory.map_large_blocks()
    rss_at_start = memory.resident_mb()  # what the jobs before this one in the process left behind
    memory.reset_peak()
    signals_before = tracking.signals_received()
    try:
        return execute(cfg, rss_at_start)
    except ConfigError as e:
        report_bad_input(e, single_run=not is_multirun())
        return JobOutcome("INVALID", sweep_id(cfg), error=redact(str(e)))
    except TrialPruned as e:
        log.info("pruned: %s", e)
        return JobOutcome("PRUNED", sweep_id(cfg))
    except Exception as e:
        if tracking.interrupted(e, signals_before):  # stopped, not failed: the sweep stops too
            raise tracking.interruption() from e
        if not is_multirun():
            raise
        log.error("job failed (its MLflow run, if it started, is FAILED with this traceback):\n%s",
                  redact(traceback.format_exc()))
        return JobOutcome("FAILED", sweep_id(cfg), error=redact(f"{type(e).__name__}: {e}"))
    finally:
        memory.release()  # the job's model, trainer and lm-eval objects are unreachable by now


def report_bad_input(e: ConfigError, single_run: bool) -> None:
    """One line on stderr that names the problem and the fix; a single run then leaves nothing
    behind and exits with status 2 (in a multirun the sweep goes on)."""
    print(f"error: {redact(str(e))}", file=sys.stderr, flush=True)
    if single_run:
        discard_output_dir()
        sys.exit(2)


def discard_output_dir() -> None:
    """A single run refused for bad input leaves nothing behind: Hydra made its output folder (the
    saved config and a log) before the job could check the input. Removed only when everything in
    it was written by this process, with the two folders above it if they are then empty."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not Path("/proc/self").exists():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    started = Path("/proc/self").stat().st_ctime
    files = list(out.rglob("*")) if out.is_dir() else []
    if files and all(f.stat().st_mtime >= started - 1 for f in files):
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(OSError):  # (outputs/DATE/TIME: the folders Hydra made above it, if empty)
            out.parent.rmdir()
            out.parent.parent.rmdir()


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
    name = tracking.run_name(cfg)
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
        key = reference_replies.cache_key(cfg, loaded[0], task_files(loaded[1]), ancestry.policy) if has_reference else None
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
