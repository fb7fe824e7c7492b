"""One Hydra job, start to finish: config -> build -> train -> evaluate -> record."""

from __future__ import annotations

import logging
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from optuna.exceptions import TrialPruned
from transformers import set_seed

from sweep import vocabulary
from sweep.config import ConfigError
from sweep.data import splits
from sweep.pipeline.build import (
    ProjectTasks,
    build,
    check_inputs,
    generated_data,
    job_datasets,
    load_project_tasks,
    resolve_lineage,
    task_files,
)
from sweep.pipeline.checks import validate
from sweep.pipeline.plan import Plan, plan_of
from sweep.pipeline.score import intermediate_scoring, record_leakage, score_and_record
from sweep.runtime import distributed, interrupts, machine, memory
from sweep.runtime.hydra_job import (
    JobOutcome,
    is_multirun,
    report_bad_input,
    sweep_id,
    use_all_cores,
)
from sweep.runtime.secrets import guard_output, redact
from sweep.scoring import baseline_cache, baselines
from sweep.scoring.registry import check_prompts_fit
from sweep.scoring.results import TRAIN_FLOPS, is_task_metric
from sweep.stages import preference, reference_replies
from sweep.stages.lineage import Lineage
from sweep.stages.trainers import StageRun
from sweep.study import trials
from sweep.study.search import prunes
from sweep.tracking import lifecycle, records, store
from sweep.tracking.outage import TrackingUnavailable
from sweep.training.methods import check_target_modules, count_parameters
from sweep.training.models import base_model_identity, memory_footprint_mb, tokenizer_and_context
from sweep.training.sft import model_flops_utilization, train, training_flops
from sweep.vocabulary import BASE_MODEL, BASE_MODEL_PATH, CACHED, METHOD, MODEL, SEED, STAGE, TASKS

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> JobOutcome:
    """Run one job. In a multirun a failure is recorded and reported, and the sweep goes on;
    a single run exits non-zero (2 for bad input, with a one-line message)."""
    guard_output()  # (again: a launcher's worker process may not have come through sweep.py)
    interrupts.install_signal_handlers()
    memory.map_large_blocks()
    memory.freeze_long_lived()  # (the libraries, not this job's objects: collections then skip them)
    rss_at_start = memory.resident_mb()  # what the jobs before this one in the process left behind
    memory.reset_peak()
    signals_before = interrupts.signals_received()
    sweep = sweep_id(cfg.tracking)
    try:
        return execute(cfg, sweep, rss_at_start)
    except ConfigError as e:
        report_bad_input(e, single_run=not is_multirun())
        return JobOutcome("INVALID", sweep, error=redact(str(e)))
    except TrialPruned as e:
        log.info("pruned: %s", e)
        return JobOutcome("PRUNED", sweep)
    except Exception as e:
        if interrupts.interrupted(e, signals_before):  # stopped, not failed: the sweep stops too
            raise interrupts.interruption() from e
        if not is_multirun():
            raise
        log.error("job failed (its MLflow run, if it started, is FAILED with this traceback):\n%s",
                  redact(traceback.format_exc()))
        return JobOutcome("FAILED", sweep, error=redact(f"{type(e).__name__}: {e}"),
                          retry=isinstance(e, TrackingUnavailable))
    finally:
        memory.release()  # the job's model, trainer and lm-eval objects are unreachable by now


@dataclass(frozen=True)
class Prepared:
    """What a job found before any compute: everything that can refuse it has run."""
    sweep_id: str
    plan: Plan                    # what the config decides: stage, method, prompting, pool, run name
    project: ProjectTasks         # the tasks (lm-eval's task manager and Task objects)
    generated: Path | None        # generated training data (data.generated), fetched and checked
    slices: dict[str, list[int]]  # each task's development slice
    lineage: Lineage              # the runs the stage starts from and is judged by
    base_model: str               # the base model's identity (what a later stage must share)


def check(cfg: DictConfig, sweep: str) -> Plan:
    """The config's checks, and what it asks of the training processes (every process runs them);
    the job's plan, derived from the checked config."""
    validate(cfg)
    plan = plan_of(cfg, sweep, is_multirun())
    stage = plan.stage
    if distributed.world_size() > 1 and prunes(cfg.trial.pruner):
        raise ConfigError(f"hydra.sweeper.pruner={cfg.trial.pruner} with {distributed.world_size()} training "
                          "processes: a pruned main process would leave the others waiting; use pruner=none")
    if distributed.world_size() > 1 and not stage.multi_process:
        raise ConfigError(f"stage={stage.name} with {distributed.world_size()} training processes: the "
                          "preference and RL stages run in one process (one GPU or the CPU); launch without accelerate")
    return plan


def prepare(cfg: DictConfig, plan: Plan, sweep: str) -> Prepared:
    """Everything a job reads before it starts: each refuses bad input with a ConfigError before a
    store exists or a model loads."""
    stage = plan.stage
    project = load_project_tasks(cfg)  # unknown tasks or templates, bad data files
    generated = generated_data(cfg)   # generated data that cannot be found
    slices = splits.dev_slices(project.tasks, cfg.data.dev_size)  # a development slice a split cannot give
    searched = plan.method.searches_prompts
    if searched:
        baselines.check_search(cfg.method.search, project.manager, cfg.eval.tasks)
    check_inputs(cfg, plan, project.tasks)  # (a few-shot count, a training split)
    most_shots = max(cfg.method.search.num_fewshot) if searched else plan.prompting.num_fewshot
    if most_shots:  # (k demonstrations that cannot fit the model's context)
        check_prompts_fit({n: project.tasks[n] for n in cfg.eval.tasks}, most_shots,
                          *tokenizer_and_context(cfg.model, cfg.paths.cache, cfg.seed),
                          key="method.search.num_fewshot" if searched else "eval.num_fewshot")
    if cfg.method.trains and stage.data != "examples":  # (preference pairs, or prompts, to train on)
        preference.split_docs(project.tasks[cfg.data.task], cfg.data.train_split, stage.name)
    if cfg.method.peft == "lora":  # (target modules the base model does not have)
        check_target_modules(cfg.model, cfg.lora, cfg.paths.cache, cfg.seed)
    identity = base_model_identity(cfg.model, cfg.seed)
    ancestry = resolve_lineage(cfg, plan, identity)  # (runs to start from, or judge with)
    return Prepared(sweep, plan, project, generated, slices, ancestry, identity)


def execute(cfg: DictConfig, sweep: str | None = None, rss_at_start: float | None = None) -> JobOutcome:
    """The job (`sweep`: its sweep's id, computed once by run_job)."""
    sweep = sweep or sweep_id(cfg.tracking)
    plan = check(cfg, sweep)
    if not distributed.is_main():
        return train_share(cfg, plan, sweep)
    job = prepare(cfg, plan, sweep)
    experiment_id = store.open_experiment(cfg.tracking)
    store.close_orphaned_runs(experiment_id, cfg.tracking)
    use_all_cores()
    set_seed(cfg.seed)
    trial = trials.attach(cfg)
    start_memory = {"rss_at_start_mb": rss_at_start} if rss_at_start is not None else {}
    run_tags = {METHOD: cfg.method.name, STAGE: cfg.stage.name, MODEL: cfg.model.name,
                TASKS: ",".join(cfg.eval.tasks), SEED: str(cfg.seed),
                vocabulary.MACHINE: machine.describe()}  # (what its costs were measured on)
    tags = lifecycle.start_tags(run_tags, sweep, cfg.tracking.get("tags"), trial.tags() if trial else {}) | {
        BASE_MODEL: job.base_model} | job.lineage.tags()
    files = task_files(job.project.tasks)
    cached = not cfg.method.trains and not cfg.eval.sequential  # (a deferred test pass has no scores to reuse)
    if cached:  # a baseline: scored once per model, tasks, prompting, limit, seed, lm-eval (and judge)
        key = baseline_cache.cache_key(plan.baseline, job.project.manager, files, job.lineage.judge)
        found = baseline_cache.find_source(key) if cfg.eval.cache else None
        if found is not None:
            return reuse_baseline(cfg, job, experiment_id, tags | {vocabulary.BASELINE_KEY_TAG: key}, *found,
                                  start_memory)
        tags |= {vocabulary.BASELINE_KEY_TAG: key, CACHED: "false"}
    built = build(cfg, job.project, job.generated, job.lineage, job.slices, plan)
    trainable, total = count_parameters(built.model)

    # The folder the base model loaded from: what an adapter's adapter_config.json names.
    tags[BASE_MODEL_PATH] = str(getattr(built.model, "name_or_path", "") or "")
    with lifecycle.mlflow_run(experiment_id, plan.run_name, tags, outage_seconds=cfg.tracking.outage_seconds,
                              system_metrics_interval=store.system_metrics_interval(cfg.tracking)) as run:
        # Each step's results are logged as soon as they exist: a later failure keeps them.
        records.log_inputs(resolved(cfg), built.files, built.datasets)
        metrics = {"trainable_params": trainable, "total_params": total,
                   "model_memory_mb": memory_footprint_mb(built.model)} | start_memory
        records.log_metrics(metrics)
        unstored = None
        if cfg.method.trains:
            metrics |= train_and_record(cfg, plan, built, total, trial)
            unstored = store_adapter(cfg, built.model)
        # (a judged adapter: with the adapter disabled, the model is the reference whose replies it is compared with)
        has_reference = job.lineage.judge is not None and cfg.method.peft and cfg.eval.enabled
        key = (reference_replies.replies_key(plan.baseline, cfg.method.quantization, cfg.eval.batch_size,
                                           job.project.manager, files, job.lineage.policy)
               if has_reference else None)
        scored, scores = score_and_record(cfg, plan, built, key)
        metrics |= scored
        if cfg.eval.enabled and plan.stage.is_policy:  # (against what this run saw, demonstrations too)
            metrics |= record_leakage(cfg, plan, built, job.project.tasks, job.slices, job.generated, scores)
        if cached:
            baseline_cache.record_scores()  # what a later reuse of this baseline reads
        if unstored is not None:
            raise unstored
        return JobOutcome("FINISHED", sweep, run.info.run_id, metrics)


def resolved(cfg: DictConfig) -> dict:
    """The job's config, interpolations resolved, as plain containers (what a run records)."""
    return OmegaConf.to_container(cfg, resolve=True)


def reuse_baseline(cfg: DictConfig, job: Prepared, experiment_id: str, tags: dict, source,
                   scores: dict, start_memory: dict) -> JobOutcome:
    name = job.plan.run_name
    with lifecycle.mlflow_run(experiment_id, name, tags, system_metrics_interval=store.system_metrics_interval(
            cfg.tracking), outage_seconds=cfg.tracking.outage_seconds) as run:
        records.log_inputs(resolved(cfg), task_files(job.project.tasks), job_datasets(cfg, job.project.tasks))
        used = start_memory | memory.peak_mb()
        records.log_metrics(used)
        metrics = baseline_cache.log_reused(source, scores) | used
        log.info("%s: reusing the scores of run %s (baseline cache; eval.cache=false scores again): %s", name,
                 source.info.run_id, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if is_task_metric(k)))
        return JobOutcome("FINISHED", job.sweep_id, run.info.run_id, metrics)


def train_share(cfg: DictConfig, plan: Plan, sweep: str) -> JobOutcome:
    """A process other than the main one of a multi-process job: its share of the training
    (gradients are averaged with the main process's), nothing recorded, scored or saved."""
    use_all_cores()
    set_seed(cfg.seed)
    if cfg.method.trains:
        built = build(cfg, plan=plan)
        with tempfile.TemporaryDirectory(prefix="trainer-") as out:
            train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, out,
                  fail_at_step=cfg.debug.fail_at_step)
    return JobOutcome("FINISHED", sweep)


def store_adapter(cfg: DictConfig, model) -> records.AdapterNotStored | None:
    """Log the trained adapter; when the store cannot take it, what to raise once the run is scored
    (the run ends FAILED with its scores, so that `make upload` can count it when the adapter is stored)."""
    if not (cfg.method.peft and cfg.tracking.log_adapter):
        return None
    try:
        records.log_adapter(model, Path(cfg.paths.pending))
    except records.AdapterNotStored as e:
        log.error("%s; the run is scored first", e)
        return e
    return None


def train_and_record(cfg: DictConfig, plan: Plan, built, total_params: int, trial) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="trainer-") as out:
        result = plan.stage.train(StageRun(
            built.model, built.tokenizer, built.train_dataset, out, cfg.stage, cfg.train, cfg.seed, judge=built.judge,
            fail_at_step=cfg.debug.fail_at_step, callbacks=intermediate_scoring(cfg, plan, built, trial),
            prune_divergence=trial is not None and trial.pruning))
    trained = {"train_seconds": result.seconds, "train_tokens": result.tokens,
               TRAIN_FLOPS: training_flops(total_params, result.tokens, frozen_base=cfg.method.peft is not None),
               "train_tokens_per_second": result.tokens_per_second, "train_examples": len(built.train_dataset)}
    trained |= {f"train_{k}": v for k, v in memory.peak_mb().items()}  # (the build's and training's: scoring's apart)
    if result.rollout_seconds:
        trained |= {"rollout_tokens": result.rollout_tokens,
                    "rollout_tokens_per_second": result.rollout_tokens / result.rollout_seconds}
    mfu = model_flops_utilization(total_params, result.tokens, result.seconds)
    trained |= {"mfu": mfu} if mfu is not None else {}
    records.log_metrics(trained)
    records.set_tags({"train_bf16": str(result.bf16).lower(), "train_optim": result.optim,
                       "torch_threads": str(result.threads), **({"train_attention": result.attention}
                                                                if result.attention else {})})
    return trained
