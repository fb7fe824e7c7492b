"""Build step: the model (with its method applied), the lm-eval tasks and the training data.

Everything that can reject the config (unknown task, missing or malformed data file, target
modules the model lacks, too few few-shot examples) fails here, before any training or scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from transformers import set_seed

from sweep.config import ConfigError
from sweep.data import GENERATED_DATASET, build_train_dataset, data_files, dataset_inputs, generated_file, read_generated
from sweep.evaluate import Prompting, check_templates, load_tasks, make_lm, task_manager, uses_chat_template
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
    datasets: list = field(default_factory=list)     # (name, file, context): MLflow dataset inputs


def load_project_tasks(cfg: DictConfig, template: str | None = None):
    """(task manager, {task name: lm-eval task of its `template` variant}), for the eval tasks and
    the task trained on; `template` defaults to eval.template."""
    names = list(dict.fromkeys([*cfg.eval.tasks, *([cfg.data.task] if cfg.method.trains else [])]))
    tm = task_manager(cfg, names)
    variants = check_templates(tm, names, template or cfg.eval.template)
    try:
        tasks = load_tasks(tm, variants)
    except ValueError as e:
        # tasks/local_data.py is loaded by lm-eval as its own module, so match its error by name.
        if type(e).__name__ == "DataFileError":
            raise ConfigError(str(e)) from None
        raise
    return tm, tasks


def task_files(tasks: dict) -> list[Path]:
    return sorted({f for task in tasks.values() for f in data_files(task)})


def generated_data(cfg: DictConfig) -> Path | None:
    """The file of generated tasks mixed into training (data.generated at data.mix > 0), fetched
    from the store when given as a run id; None when there is none."""
    if not cfg.method.trains or not cfg.data.get("mix"):
        return None
    return generated_file(cfg.data, cfg.tracking.uri, cfg.paths.cache)


def build(cfg: DictConfig, loaded: tuple | None = None, generated: Path | None = None) -> Built:
    """`loaded`: (task manager, tasks) when the caller has loaded them already; `generated`: the
    file `generated_data` found (looked up here when not given)."""
    tm, tasks = loaded or load_project_tasks(cfg)
    generated = generated or generated_data(cfg)
    eval_tasks = {name: tasks[name] for name in cfg.eval.tasks}
    if cfg.method.name != "strongest_baseline":  # (which checks each variant it tries)
        Prompting.from_config(cfg).check(eval_tasks)

    model, tokenizer = load_model_and_tokenizer(cfg.model, Path(cfg.paths.cache), cfg.seed, cfg.method.quantization)
    set_seed(cfg.seed)  # an adapter's initial weights are random (LoRA's A, prompt embeddings): same seed, same build
    model = apply_method(model, cfg, tokenizer.name_or_path)
    lm = make_lm(model, tokenizer, cfg.eval.batch_size)

    train_dataset = None
    if cfg.method.trains:
        train_task = tasks[cfg.data.task]
        train_dataset = build_train_dataset(train_task, cfg.data, lm, cfg.train.max_seq_length, cfg.seed,
                                            chat=uses_chat_template({cfg.data.task: train_task}),
                                            generated=read_generated(generated) if generated else None)
    files, inputs = task_files(tasks), dataset_inputs(cfg, tasks)
    if generated:
        files.append(generated)
        inputs.append((GENERATED_DATASET, generated, "training"))
    return Built(model, tokenizer, lm, tm, eval_tasks, train_dataset, files, inputs)
