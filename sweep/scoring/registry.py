"""lm-eval's task registry for the project: each task's template variants (tasks/<task>_<template>.yaml),
loaded and checked before any compute, with the decoding of generation tasks."""

from __future__ import annotations

import heapq
import logging
import os
from pathlib import Path
from statistics import median_high

from omegaconf import DictConfig

from sweep.config import DEFAULT_TEMPLATE, ConfigError, close_matches
from sweep.data.templates import use_compiled_templates
from sweep.runtime.retry import first_line
from sweep.scoring.leakage import doc_text

log = logging.getLogger(__name__)
PROMPT_SAMPLE = 200  # examples whose tokens give a demonstration's, and a scored example's, typical length


def variant_name(task: str, template: str) -> str:
    """The lm-eval task that renders `task` with `template` (tasks/<task>_<template>.yaml)."""
    return task if template == DEFAULT_TEMPLATE else f"{task}_{template}"


def templates_of(task: str, all_tasks) -> list[str]:
    return [DEFAULT_TEMPLATE] + sorted(t[len(task) + 1:] for t in all_tasks if t.startswith(f"{task}_"))


def task_manager(paths: DictConfig, include_paths: list[str], task_names: list[str]):
    """lm-eval's TaskManager over tasks/ and eval.include_paths.

    lm-eval's own ~15k task YAMLs take seconds to index, so they are added only when a requested
    task is not found in the project's folders. Project tasks read their JSONL files from
    `paths.data` (passed as task metadata, see tasks/local_data.py); `include_paths`: eval.include_paths.
    """
    from lm_eval.tasks import TaskManager

    use_compiled_templates()  # (lm-eval compiles a template again for every document: sweep/data/templates.py)
    meta = {"data_dir": paths.data}
    folders = [paths.tasks, *include_paths]
    tm = TaskManager(include_path=folders, include_defaults=False, metadata=meta)
    if all(t in tm.all_tasks for t in task_names):
        return tm
    builtin = [t for t in task_names if t not in tm.all_tasks]  # (not in the project's folders: lm-eval's own?)
    for folder in folders:  # (a file of that name that does not parse: said now, before lm-eval's index)
        broken_task_file(Path(folder) / f"{builtin[0]}.yaml")
    # Our sst2/rte YAMLs shadow lm-eval's GLUE ones on purpose: quiet its notice about that.
    logging.getLogger("lm_eval.tasks._index").setLevel(logging.ERROR)
    tm = TaskManager(include_path=folders, include_defaults=True, metadata=meta)
    unknown = [t for t in task_names if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(
            f"eval.tasks: unknown lm-eval task {unknown[0]!r}{close_matches(unknown[0], tm.all_tasks)}; "
            f"the project's tasks are: {', '.join(sorted(_yaml_task_names(paths.tasks)))} "
            f"(add folders of your own task YAMLs with eval.include_paths)"
        )
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")]
    if builtin and offline:  # (its data would come from the Hub: refused now, not after minutes of retries)
        raise ConfigError(f"eval.tasks: {builtin[0]} is lm-eval's built-in task, whose data come from the Hugging "
                          f"Face Hub, and this process is offline ({offline[0]}=1); give a task YAML over local files "
                          f"(eval.include_paths, as tasks/ does) or unset {offline[0]} where the Hub is reachable")
    return tm


def check_templates(tm, task_names: list[str], template: str, key: str = "eval.template") -> dict[str, str]:
    """{task: the lm-eval task of its `template` variant}; ConfigError (naming `key`) when a task has none."""
    variants = {}
    for name in task_names:
        variant = variant_name(name, template)
        if variant not in tm.all_tasks:
            have = templates_of(name, tm.all_tasks)
            raise ConfigError(f"{key}={template!r}: task {name} has no such template (no task "
                              f"{variant}){close_matches(template, have)}; its templates are: {', '.join(have)}")
        variants[name] = variant
    return variants


def broken_task_file(path: Path) -> None:
    """lm-eval skips a task YAML it cannot parse without a word, and the task is then "unknown":
    name the file and the parse error instead."""
    import yaml

    class Loader(yaml.SafeLoader):  # lm-eval's tags (`!function module.name`) as plain text
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))
    if path.is_file():
        try:
            yaml.load(path.read_text(), Loader=Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"eval.tasks: the task file {path} is not valid YAML ({first_line(e)}); "
                              f"fix it or remove it from eval.include_paths") from None


def _yaml_task_names(folder: str) -> list[str]:
    """The tasks in `folder`, without their template variants (<task>_<template>.yaml)."""
    stems = [p.stem for p in Path(folder).glob("*.yaml")]
    return [s for s in stems if not any(s.startswith(f"{other}_") for other in stems)]


def load_tasks(tm, variants: dict[str, str]) -> dict:
    """Task objects keyed by task name (their datasets are loaded now, so a bad data file fails here)."""
    loaded = tm.load(list(dict.fromkeys(variants.values())))["tasks"]
    return {name: loaded[variant] for name, variant in variants.items()}


def set_instruction(tasks: dict, instruction: str) -> None:
    """`instruction` in place of each task's own (lm-eval's `description`: before the prompt, or the
    system turn with a chat template): eval.instruction, or a searched one (sweep/scoring/instructions.py)."""
    for task in tasks.values():
        task.config.description = instruction


def set_generation(tasks: dict, generation: DictConfig) -> None:
    """eval.generation's settings (those not null; lm-eval's names) into each generation task's
    generation_kwargs."""
    settings = {k: v for k, v in generation.items() if v is not None}
    for task in tasks.values():
        if task.OUTPUT_TYPE == "generate_until" and settings:
            task.set_config(key="generation_kwargs", value=settings, update=True)


def uses_chat_template(tasks: dict) -> bool:
    """Whether the tasks' template is a chat one (task metadata `apply_chat_template: true`); every
    task of one scoring pass must agree, since lm-eval applies the chat template to all of them."""
    flags = {name: bool((t.config.metadata or {}).get("apply_chat_template")) for name, t in tasks.items()}
    if len(set(flags.values())) > 1:
        raise ConfigError(f"eval.tasks mix chat and plain-text templates ({flags}); score them in separate runs")
    return any(flags.values())


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


def demonstration_tokens(task, doc, tokenizer) -> int:
    return len(tokenizer(f"{task.doc_to_text(doc)} {task.doc_to_target(doc)}")["input_ids"])


def text_length(doc: dict) -> int:
    """A document's length in characters, as its text fields read (leakage.doc_text)."""
    return len(doc_text(doc))


def check_prompts_fit(tasks: dict, k: int, tokenizer, context: int | None, key: str = "eval.num_fewshot") -> None:
    """ConfigError when k demonstrations and a scored example, each of typical length (the medians
    of samples), exceed the model's context: such a k cannot be what was meant. When only the
    longest k demonstrations with the longest example would overflow, a warning: retrieval, or a
    draw, may pick them, and lm-eval then cuts the prompt from the left."""
    if not k or not context:
        return
    for name, task in tasks.items():
        split = task.config.fewshot_split or task.config.training_split
        if not split:
            continue
        docs, scored = task.dataset[split], list(task.eval_docs)
        typical = median_high(demonstration_tokens(task, d, tokenizer) for d in spread(docs))
        query = median_high([len(tokenizer(str(task.doc_to_text(d)))["input_ids"]) for d in spread(scored)] or [0])
        if k * typical + query > context:
            raise ConfigError(f"{key}={k} is more demonstrations than the model's context of {context:,} "
                              f"tokens holds on task {name} (about {typical} tokens each, and {query} for the example "
                              f"scored); use {key}<={max(0, (context - query) // typical)}")
        longest = sum(demonstration_tokens(task, d, tokenizer) for d in heapq.nlargest(k, docs, key=text_length))
        longest += len(tokenizer(str(task.doc_to_text(max(scored, key=text_length))))["input_ids"]) if scored else 0
        if longest > context:
            log.warning("%s=%d on task %s: its %d longest demonstrations and longest example make "
                        "%d tokens, over the model's context of %d; a prompt that long is cut from the left",
                        key, k, name, k, longest, context)


def spread(docs) -> list:
    """Up to PROMPT_SAMPLE documents spread evenly over `docs`."""
    return [docs[i] for i in range(0, len(docs), max(1, len(docs) // PROMPT_SAMPLE))][:PROMPT_SAMPLE]
