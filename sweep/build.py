"""Build step: the model (with its method applied), the lm-eval tasks and the training data.

Everything that can reject the config (unknown task, missing or malformed data file, target
modules the model lacks, too few few-shot examples) fails here, before any training or scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.data import build_train_dataset, data_files
from sweep.evaluate import check_fewshot_pool, load_tasks, make_lm, task_manager
from sweep.methods import apply_method
from sweep.models import load_model_and_tokenizer


@dataclass
class Built:
    model: object                 # what is trained and scored (peft-wrapped for adapters)
    tokenizer: object
    lm: object                    # lm-eval's HFLM around `model`
    task_manager: object
    eval_tasks: dict              # name -> lm-eval Task scored
    train_dataset: object | None  # tokenized examples, None for the baselines
    files: list[Path] = field(default_factory=list)  # data files read (hashed into the run)


def load_project_tasks(cfg: DictConfig):
    names = list(dict.fromkeys([*cfg.eval.tasks, *([cfg.data.task] if cfg.method.trains else [])]))
    tm = task_manager(cfg, names)
    try:
        tasks = load_tasks(tm, names)
    except ValueError as e:
        # tasks/local_data.py is loaded by lm-eval as its own module, so match its error by name.
        if type(e).__name__ == "DataFileError":
            raise ConfigError(str(e)) from None
        raise
    return tm, tasks


def task_files(tasks: dict) -> list[Path]:
    return sorted({f for task in tasks.values() for f in data_files(task)})


def build(cfg: DictConfig, loaded: tuple | None = None) -> Built:
    """`loaded`: (task manager, tasks) when the caller has loaded them already."""
    tm, tasks = loaded or load_project_tasks(cfg)
    eval_tasks = {name: tasks[name] for name in cfg.eval.tasks}
    check_fewshot_pool(eval_tasks, cfg.method.num_fewshot)

    model, tokenizer = load_model_and_tokenizer(cfg.model, Path(cfg.paths.cache), cfg.seed, cfg.method.quantization)
    model = apply_method(model, cfg, tokenizer.name_or_path)
    lm = make_lm(model, tokenizer, cfg.eval.batch_size)

    train_dataset = None
    if cfg.method.trains:
        train_dataset = build_train_dataset(tasks[cfg.data.task], cfg.data, lm, cfg.train.max_seq_length, cfg.seed)
    return Built(model, tokenizer, lm, tm, eval_tasks, train_dataset, task_files(tasks))
