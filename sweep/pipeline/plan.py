"""A job's plan: what its config decides about the work, derived once where the job is prepared and
handed down as a frozen value, as torchtune's recipes do in `setup`. Before it, the recipe looked
the stage up six times and derived its prompting five times from the whole config; now each step
reads the field it needs, and a step cannot see a different answer from the one before it."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from sweep.data import splits
from sweep.pipeline.naming import run_name
from sweep.runtime.hydra_job import is_multirun, sweep_id
from sweep.scoring import baseline_cache
from sweep.scoring.evaluate import Prompting
from sweep.stages.lineage import LineageScope
from sweep.stages.table import STAGES, Stage
from sweep.training.checks import METHODS, MethodKind


@dataclass(frozen=True)
class Plan:
    """What a job does, decided by its (checked) config."""
    stage: Stage                       # conf/stage: its trainer, data and head
    method: MethodKind                 # whether the method trains, whether it searches prompts
    prompting: Prompting               # how the method prompts: its k, sampler, draws, calibration
    pool: splits.Pool                  # where k-shot demonstrations come from (eval.fewshot_pool)
    run_name: str                      # the run's name in MLflow
    lineage: LineageScope              # where a later stage's earlier runs are looked for
    baseline: baseline_cache.Settings  # what a baseline's scores (and a judged run's references) depend on
    eval_settings: DictConfig          # the eval group, for prompting at another k (a searched variant's)
    seed: int

    def prompting_at(self, num_fewshot: int) -> Prompting:
        """The job's prompting with `num_fewshot` demonstrations (a searched variant's)."""
        return Prompting.from_config(self.eval_settings, num_fewshot, self.seed)


def plan_of(cfg: DictConfig, sweep: str | None = None, multirun: bool | None = None) -> Plan:
    """The plan of a checked config (`sweep`: its sweep's id; by default the job's own)."""
    sweep = sweep_id(cfg.tracking) if sweep is None else sweep
    multirun = is_multirun() if multirun is None else multirun
    prompting = Prompting.from_config(cfg.eval, cfg.method.num_fewshot, cfg.seed)
    pool = demonstration_source(cfg.data, cfg.eval.fewshot_pool, cfg.seed)
    search = cfg.method.get("search")
    baseline = baseline_cache.Settings(
        model=cfg.model, model_cache=cfg.paths.cache, tasks=list(cfg.eval.tasks),
        templates=list(search.template) if search is not None else [cfg.eval.template],
        prompting=prompting, search=OmegaConf.to_container(search) if search is not None else None,
        limit=cfg.eval.limit, dev_size=cfg.data.dev_size, seed=cfg.seed,
        pool=pool if cfg.method.num_fewshot or search is not None else None,  # (0-shot: none)
        generation={k: v for k, v in cfg.eval.generation.items() if v is not None}, instruction=cfg.eval.instruction)
    lineage = LineageScope(cfg.tracking.uri, cfg.tracking.experiment, sweep, multirun)
    return Plan(stage=STAGES[cfg.stage.name], method=METHODS[cfg.method.name], prompting=prompting, pool=pool,
                run_name=run_name(cfg), lineage=lineage, baseline=baseline, eval_settings=cfg.eval, seed=cfg.seed)


def demonstration_source(data: DictConfig, fewshot_pool: str, seed: int) -> splits.Pool:
    """The labelled examples k-shot prompts draw from: the examples an adapter of the same size and
    seed trained on (eval.fewshot_pool=trained), else the whole train split."""
    return splits.Pool(data.max_train_samples, seed) if fewshot_pool == "trained" else splits.WHOLE_SPLIT
