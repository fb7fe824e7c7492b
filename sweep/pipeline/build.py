"""Build step: the model (with its method applied), the lm-eval tasks and the training data.

Everything that can reject the config (unknown task, missing or malformed data file, target
modules the model lacks, too few few-shot examples) fails here, before any training or scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig
from transformers import set_seed

from sweep.config import ConfigError
from sweep.data import splits
from sweep.data.examples import (
    GENERATED_DATASET,
    build_train_dataset,
    check_split,
    data_files,
    dataset_inputs,
    generated_file,
    read_generated,
)
from sweep.pipeline.plan import Plan, plan_of
from sweep.scoring import fewshot
from sweep.scoring.evaluate import make_lm
from sweep.scoring.registry import (
    check_templates,
    load_tasks,
    set_generation,
    set_instruction,
    task_manager,
    uses_chat_template,
)
from sweep.stages import lineage as lineages
from sweep.stages.lineage import Lineage, merged
from sweep.stages.preference import (
    RewardJudge,
    checked_pairs,
    held_out_pairs,
    judge_from,
    pair_rows,
    preference_docs,
)
from sweep.training.methods import apply_method
from sweep.training.models import load_model_and_tokenizer


@dataclass
class Built:
    model: object                 # what is trained and scored (peft-wrapped for adapters)
    tokenizer: object
    lm: object | None             # lm-eval's HFLM around `model` (None for a reward model)
    task_manager: object
    eval_tasks: dict              # name -> lm-eval Task scored
    train_dataset: object | None  # tokenized examples (SFT), rows of pairs or prompts (the other stages), None
                                  # for the baselines
    judge: RewardJudge | None = None  # the reward model of eval.judge_run_id
    eval_pairs: list = field(default_factory=list)  # stage=reward: the held-out pairs it is scored on
    dev_tasks: dict = field(default_factory=dict)   # name -> lm-eval Task scoring its development slice
    dev_pairs: list = field(default_factory=list)   # stage=reward: its development pairs
    pools: dict = field(default_factory=dict)       # name -> demonstrations to draw from (k-shot baselines)
    files: list[Path] = field(default_factory=list)  # data files read (hashed into the run)
    datasets: list = field(default_factory=list)     # (name, file, context): MLflow dataset inputs


class ProjectTasks(NamedTuple):
    manager: object  # lm-eval's TaskManager over tasks/ and eval.include_paths
    tasks: dict      # task name -> lm-eval Task (of one template's variant)


def load_project_tasks(cfg: DictConfig, template: str | None = None) -> ProjectTasks:
    """The eval tasks and the task trained on, of their `template` variant (default: eval.template)."""
    names = list(dict.fromkeys([*cfg.eval.tasks, *([cfg.data.task] if cfg.method.trains else [])]))
    tm = task_manager(cfg.paths, cfg.eval.include_paths, names)
    variants = check_templates(tm, names, template or cfg.eval.template)
    try:
        tasks = load_tasks(tm, variants)
    except ValueError as e:
        # tasks/local_data.py is loaded by lm-eval as its own module, so match its error by name.
        if type(e).__name__ == "DataFileError":
            raise ConfigError(str(e)) from None
        raise
    if cfg.eval.instruction:  # (a baseline's instruction in place of its template's)
        set_instruction({name: tasks[name] for name in cfg.eval.tasks}, cfg.eval.instruction)
    return ProjectTasks(tm, tasks)


def task_files(tasks: dict) -> list[Path]:
    return sorted({f for task in tasks.values() for f in data_files(task)})


def generated_data(cfg: DictConfig) -> Path | None:
    """The file of generated tasks mixed into training (data.generated at data.mix > 0), fetched
    from the store when given as a run id; None when there is none."""
    if not cfg.method.trains or not cfg.data.get("mix"):
        return None
    return generated_file(cfg.data, cfg.tracking.uri, cfg.paths.cache)


def job_datasets(cfg: DictConfig, tasks: dict) -> list[tuple[str, Path, str]]:
    """(name, file, context) of the splits the job trains on and reports on (MLflow dataset inputs)."""
    trained = (cfg.data.task, cfg.data.train_split) if cfg.method.trains else None
    return dataset_inputs(tasks, list(cfg.eval.tasks), trained)


def resolve_lineage(cfg: DictConfig, plan: Plan, base_model: str) -> Lineage:
    """The runs the job's stage starts from and is judged by, checked and their adapters fetched."""
    return lineages.resolve(cfg.stage, cfg.init.run_id, cfg.eval.judge_run_id, plan.lineage, base_model,
                            Path(cfg.paths.cache) / "adapters")


def build(cfg: DictConfig, project: ProjectTasks | None = None, generated: Path | None = None,
          lineage: Lineage = Lineage(), slices: dict[str, list[int]] | None = None, plan: Plan | None = None) -> Built:
    """`project`: the tasks, when the caller has loaded them already; `generated`: the file
    `generated_data` found (looked up here when not given); `lineage`: the runs the stage starts
    from and is judged by (sweep/stages/lineage.py); `slices`: each task's development slice
    (sweep/data/splits.py; carved here when not given); `plan`: the job's (derived here when not given)."""
    plan = plan or plan_of(cfg)
    tm, tasks = project or load_project_tasks(cfg)
    generated = generated or generated_data(cfg)
    slices = splits.dev_slices(tasks, cfg.data.dev_size) if slices is None else slices
    eval_tasks = {name: tasks[name] for name in cfg.eval.tasks}
    set_generation(eval_tasks, cfg.eval.generation)
    dev_tasks = {name: splits.dev_task(task, slices[name]) for name, task in eval_tasks.items() if slices.get(name)}
    pools = {name: splits.demonstration_pool(task, slices.get(name, []), plan.pool)
             for name, task in eval_tasks.items()} if cfg.method.num_fewshot else {}
    trained_apart = splits.held_from_training(tasks[cfg.data.task], slices.get(cfg.data.task, [])) \
        if uses_training_split(tasks.get(cfg.data.task), cfg.data) else set()  # (nor its groups)
    check_inputs(cfg, plan, tasks)
    stage = plan.stage
    model, tokenizer = load_model_and_tokenizer(cfg.model, Path(cfg.paths.cache), cfg.seed, cfg.method.quantization,
                                                reward_head=not stage.is_policy)
    set_seed(cfg.seed)  # an adapter's initial weights are random (LoRA's A, prompt embeddings): same seed, same build
    model = merged(model, lineage.policy)  # the parent policy (its lineage's adapters merged in), else the base
    model = apply_method(model, cfg.method, cfg.lora, cfg.prompt, tokenizer.name_or_path, stage.head)
    lm = make_lm(model, tokenizer, cfg.eval.batch_size) if stage.is_policy else None
    if lm is not None:
        fewshot.keep_pool_vectors_in(lm, Path(cfg.paths.cache) / "retrieval")
    judge = judge_from(lineage.judge, cfg.model, cfg.paths.cache, cfg.seed, cfg.train.max_seq_length,
                       cfg.eval.batch_size) if lineage.judge else None

    train_dataset, eval_pairs, dev_pairs = None, [], []
    if cfg.method.trains and stage.data == "examples":
        train_task = tasks[cfg.data.task]
        train_dataset = build_train_dataset(train_task, cfg.data, lm, cfg.train.max_seq_length, cfg.seed,
                                            chat=uses_chat_template({cfg.data.task: train_task}),
                                            generated=read_generated(generated) if generated else None,
                                            exclude=trained_apart)
    elif cfg.method.trains:
        task = tasks[cfg.data.task]
        docs = preference_docs(task, cfg.data.train_split, cfg.data.max_train_samples, cfg.seed, tokenizer,
                               cfg.data.get("max_prompt_tokens"), stage.name, exclude=trained_apart)
        rows = pair_rows(task, docs)
        train_dataset = rows if stage.data == "pairs" else [{"prompt": r["prompt"]} for r in rows]
        if not stage.is_policy:  # (a reward model is scored on held-out pairs)
            eval_pairs = pair_rows(task, held_out_pairs(task, cfg.eval.pairs, stage.name))
            dev_pairs = pair_rows(task, dev_pairs_of(task, slices.get(cfg.data.task, []), stage.name))
    files, inputs = task_files(tasks), job_datasets(cfg, tasks)
    if generated:
        files.append(generated)
        inputs.append((GENERATED_DATASET, generated, "training"))
    return Built(model, tokenizer, lm, tm, eval_tasks, train_dataset, judge=judge, eval_pairs=eval_pairs, files=files,
                 datasets=inputs, dev_tasks=dev_tasks, dev_pairs=dev_pairs, pools=pools)


def uses_training_split(task, data_cfg: DictConfig) -> bool:
    """Whether the job trains on the task's train split (the one its development slice is carved from)."""
    return task is not None and data_cfg.train_split == task.config.training_split


def dev_pairs_of(task, indices: list[int], stage: str) -> list[dict]:
    """The preference pairs of a development slice (stage=reward scores its accuracy on them)."""
    rows = task.dataset[splits.DEV_SPLIT if splits.has_dev_split(task) else task.config.training_split]
    return checked_pairs(task, [rows[i] for i in indices], stage) if indices else []


def check_inputs(cfg: DictConfig, plan: Plan, tasks: dict) -> None:
    """What the loaded tasks can refuse of the config (before a store exists): a few-shot count larger
    than a task's pool, prompting a task cannot take, a training split the task does not have."""
    if not plan.method.searches_prompts:  # (a search checks each variant it tries)
        plan.prompting.check({name: tasks[name] for name in cfg.eval.tasks})
    if cfg.method.trains and plan.stage.data == "examples":
        check_split(tasks[cfg.data.task], cfg.data.train_split)
