"""One Hydra job, start to finish: config -> build -> train -> evaluate -> record."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from optuna.exceptions import TrialPruned
from transformers import set_seed

from sweep import tracking, trials
from sweep.build import build
from sweep.config import ConfigError, validate
from sweep.evaluate import score
from sweep.methods import count_parameters
from sweep.models import memory_footprint_mb
from sweep.train import train


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


def sweep_id(cfg: DictConfig) -> str:
    """`tracking.sweep_id`, else the date/time folders of Hydra's output dir (the sweep dir in a
    multirun, so every job of one sweep shares it)."""
    if cfg.tracking.sweep_id:
        return str(cfg.tracking.sweep_id)
    hc = _hydra()
    if hc is None:
        return time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(hc.runtime.output_dir)
    return sweep_id_of(out.parent if is_multirun() else out)


def sweep_id_of(folder: str | Path) -> str:
    return "_".join(Path(folder).parts[-2:])


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_job(cfg: DictConfig) -> JobOutcome:
    """Run one job. In a multirun a failure is recorded and reported, and the sweep goes on;
    a single run exits non-zero (2 for bad input, with a one-line message)."""
    tracking.install_signal_handlers()
    try:
        return execute(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if not is_multirun():
            sys.exit(2)
        return JobOutcome("INVALID", sweep_id(cfg), error=str(e))
    except TrialPruned as e:
        print(f"[sft-sweep] pruned: {e}", flush=True)
        return JobOutcome("PRUNED", sweep_id(cfg))
    except Exception as e:
        if not is_multirun():
            raise
        traceback.print_exc()  # the MLflow run (if it started) is FAILED with this traceback
        return JobOutcome("FAILED", sweep_id(cfg), error=f"{type(e).__name__}: {e}")


def intermediate_scoring(cfg: DictConfig, built) -> list:
    """With eval.every_steps, score a validation slice during training (for curves and pruning)."""
    if not cfg.eval.every_steps:
        return []

    def score_slice() -> dict[str, float]:
        return score(built.lm, built.task_manager, built.eval_tasks, cfg.method.num_fewshot,
                     cfg.eval.slice_size, cfg.seed, log_samples=False).metrics

    return [trials.report_callback(trials.current(), score_slice, cfg.eval.every_steps, cfg.eval.slice_size)]


def execute(cfg: DictConfig) -> JobOutcome:
    validate(cfg)
    experiment_id = tracking.open_experiment(cfg.tracking)
    set_seed(cfg.seed)
    built = build(cfg)
    trainable, total = count_parameters(built.model)

    name = tracking.run_name(cfg)
    with tracking.mlflow_run(experiment_id, name, tracking.start_tags(cfg, sweep_id(cfg))) as run:
        # Each step's results are logged as soon as they exist: a later failure keeps them.
        tracking.log_inputs(cfg, built.files)
        metrics = {"trainable_params": trainable, "total_params": total,
                   "model_memory_mb": memory_footprint_mb(built.model)}
        tracking.log_metrics(metrics)

        if cfg.method.trains:
            with tempfile.TemporaryDirectory(prefix="trainer-") as out:
                result = train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, out,
                               callbacks=intermediate_scoring(cfg, built), fail_at_step=cfg.debug.fail_at_step)
            trained = {"train_seconds": result.seconds, "train_tokens": result.tokens,
                       "train_tokens_per_second": result.tokens_per_second}
            tracking.log_metrics(trained)
            tracking.set_tags({"train_bf16": str(result.bf16).lower(), "train_optim": result.optim})
            metrics |= trained
            if cfg.method.peft and cfg.tracking.log_adapter:
                tracking.log_adapter(built.model)

        start = time.perf_counter()
        scores = score(built.lm, built.task_manager, built.eval_tasks, cfg.method.num_fewshot,
                       cfg.eval.limit, cfg.seed, cfg.eval.log_samples)
        scored = scores.metrics | {"eval_seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
        tracking.log_metrics(scored)
        tracking.log_eval_results(scores.results)
        print(f"[sft-sweep] {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in scores.metrics.items()), flush=True)
        return JobOutcome("FINISHED", sweep_id(cfg), run.info.run_id, metrics | scored)
