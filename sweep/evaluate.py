"""Scoring with lm-eval, in process, on the model that was just trained (no save and reload)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import ConfigError, close_matches


def task_manager(cfg: DictConfig, task_names: list[str]):
    """lm-eval's TaskManager over tasks/ and eval.include_paths.

    lm-eval's own ~15k task YAMLs take seconds to index, so they are added only when a requested
    task is not found in the project's folders. Project tasks read their JSONL files from
    `paths.data` (passed as task metadata, see tasks/local_data.py).
    """
    from lm_eval.tasks import TaskManager

    paths = [cfg.paths.tasks, *cfg.eval.include_paths]
    meta = {"data_dir": cfg.paths.data}
    tm = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
    if all(t in tm.all_tasks for t in task_names):
        return tm
    # Our sst2/rte YAMLs shadow lm-eval's GLUE ones on purpose: quiet its notice about that.
    logging.getLogger("lm_eval.tasks._index").setLevel(logging.ERROR)
    tm = TaskManager(include_path=paths, include_defaults=True, metadata=meta)
    unknown = [t for t in task_names if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(
            f"eval.tasks: unknown lm-eval task {unknown[0]!r}{close_matches(unknown[0], tm.all_tasks)}; "
            f"the project's tasks are: {', '.join(sorted(_yaml_task_names(cfg.paths.tasks)))} "
            f"(add folders of your own task YAMLs with eval.include_paths)"
        )
    return tm


def _yaml_task_names(folder: str) -> list[str]:
    return [p.stem for p in Path(folder).glob("*.yaml")]


def load_tasks(tm, task_names: list[str]) -> dict:
    """Task objects by name (their datasets are loaded now, so a bad data file fails here)."""
    return tm.load(list(task_names))["tasks"]


def check_fewshot_pool(tasks: dict, k: int) -> None:
    for name, task in tasks.items():
        if k == 0:
            continue
        split = task.config.fewshot_split or task.config.training_split
        pool = len(task.dataset[split]) if split else 0
        if k > pool:
            raise ConfigError(
                f"eval.num_fewshot={k} is larger than task {name}'s few-shot pool "
                f"({pool} examples in split {split!r}); use eval.num_fewshot<={pool}"
            )


def make_lm(model, tokenizer, batch_size: int):
    """lm-eval's HFLM around an in-memory model (peft-wrapped or not)."""
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # "pretrained is not a str"
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@dataclass
class Scores:
    metrics: dict[str, float]                       # "<task>/<metric>" -> value (stderr as "<metric>_stderr")
    results: dict = field(default_factory=dict)     # lm-eval's full output, samples included


def score(lm, tm, tasks: dict, num_fewshot: int, limit: int | None, seed: int, log_samples: bool) -> Scores:
    from lm_eval import simple_evaluate

    results = simple_evaluate(
        model=lm, tasks=list(tasks.values()), task_manager=tm, num_fewshot=num_fewshot, limit=limit,
        log_samples=log_samples, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    return Scores(metrics=flatten_metrics(results["results"]), results=results)


def flatten_metrics(results: dict) -> dict[str, float]:
    """{'sst2': {'acc,none': .9, 'acc_stderr,none': .01}} -> {'sst2/acc': .9, 'sst2/acc_stderr': .01}."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or metric == "alias":
                continue
            if metric == "sample_len":
                metric = "n_samples"
            name = metric if filt in ("none", "") else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(value)
    return flat
