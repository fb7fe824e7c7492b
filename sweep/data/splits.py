"""The three roles of a task's examples, the same for both arms: train, development, test.

- **test**: the split a task reports on (its validation split here; the first `eval.limit`
  examples). Scored once per run, after every choice is made, and never read by one.
- **development**: the first `data.dev_size` examples of the task's `dev` split (SST-2, RTE: full
  sentences, or premises, that no test or training example shares; scripts/build_splits.py), or
  else a seeded sample of whole groups (`group_of`) of the train split that no test example shares.
  Every choice is made on it: the strongest
  baseline's variant and demonstrations, an Optuna trial's value, its pruning, the best
  configuration of a sweep. Runs record its scores as `dev/<task>/<metric>`.
- **train**: the rest of the train split: what adapters fit, and the pool demonstrations are
  drawn from (a development example, or one of its group, is never trained on, nor put in a prompt).

The slice does not move with `seed`: every run of a task, whatever its seed or method, chooses on
the same examples, so the arms' development scores compare like for like.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass

from sweep.config import ConfigError
from sweep.data.templates import render_template

DEV_SPLIT = "dev"      # the name the development slice gets inside a task object
TEST_BLOCK = "test_block"  # the name a block of test examples gets inside a task object
DEV_PREFIX = "dev/"    # development scores: dev/<task>/<metric>
DEV_SLICE_SEED = 0
log = logging.getLogger(__name__)


def dev_name(task: str) -> str:
    """The name a task's development scores are recorded under: dev/sst2 (metrics dev/sst2/acc)."""
    return DEV_PREFIX + task


def selection_metric(name: str) -> str:
    """The metric a choice reads for an objective: a task's score on the development slice
    (sst2/acc -> dev/sst2/acc); a run-level metric (trainable_params) as it is."""
    return name if "/" not in name or name.startswith(DEV_PREFIX) else DEV_PREFIX + name


def test_metric(name: str) -> str:
    """The test score reported for a development one (dev/sst2/acc -> sst2/acc)."""
    return name.removeprefix(DEV_PREFIX)


def text_of(task, doc) -> str:
    return str(task.doc_to_text(doc))


def has_train_split(task) -> bool:
    split = task.config.training_split
    return bool(split) and split not in (task.config.validation_split, task.config.test_split)


def has_dev_split(task) -> bool:
    """Whether the task ships its development examples as a split of their own (`dev`: SST-2 and
    RTE, built by source in scripts/build_splits.py) rather than carved from its train split."""
    return DEV_SPLIT in task.dataset and task.config.training_split != DEV_SPLIT


def group_of(task, doc) -> str:
    """The source an example comes from: the task metadata's `group_by` template (hh_rlhf: the
    dialogue's first Human turn), else its prompt text. A carved development slice takes whole groups."""
    template = (task.config.metadata or {}).get("group_by")
    if template:
        return render_template(template, doc)
    return text_of(task, doc)


def dev_indices(task, size: int, seed: int = DEV_SLICE_SEED) -> list[int]:
    """The development slice: the first `size` rows of the task's own `dev` split where it has one;
    else `size` seeded indices into its train split, from groups (`group_of`) that no test example
    shares; [] for size 0."""
    if not size:
        return []
    if has_dev_split(task):
        available = len(task.dataset[DEV_SPLIT])
        if size > available:
            raise ConfigError(f"data.dev_size={size} is larger than task {task.config.task}'s dev split "
                              f"({available} examples); lower it")
        return list(range(size))
    if not has_train_split(task):
        raise ConfigError(f"data.dev_size={size}: task {task.config.task} has no train split apart from the split it "
                          f"reports on, so there is nowhere to carve a development slice from; set data.dev_size=0 "
                          f"(then nothing can be chosen on it)")
    train = task.dataset[task.config.training_split]
    if size > len(train):  # (no need to read every example to know)
        raise ConfigError(f"data.dev_size={size} is larger than task {task.config.task}'s train split can give "
                          f"(it has {len(train)} examples); lower it")
    reported = {group_of(task, d) for d in task.eval_docs}
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    picked = []
    for i in order:
        if group_of(task, train[i]) not in reported:
            picked.append(i)
            if len(picked) == size:
                return sorted(picked)
    raise ConfigError(f"data.dev_size={size} is larger than task {task.config.task}'s train split can give "
                      f"({len(picked)} examples not in the test split); lower it")


def held_from_training(task, dev: list[int]) -> set[int]:
    """Indices of the train split never trained on nor shown as a demonstration: a carved development
    slice and every example of its groups (none when the task has its own dev split)."""
    if not dev or has_dev_split(task):
        return set()
    train = task.dataset[task.config.training_split]
    groups = {group_of(task, train[i]) for i in dev}
    return {i for i, doc in enumerate(train) if group_of(task, doc) in groups}


def dev_slices(tasks: dict, size: int) -> dict[str, list[int]]:
    """{task: its development slice} for every task that has a train split to carve one from (a
    task scored on its own split only, such as the user-oriented instructions, has none)."""
    out = {}
    for name, task in tasks.items():
        if has_train_split(task):
            out[name] = dev_indices(task, size)
        elif size:
            log.info("task %s has no train split: no development score for it", name)
    return out


def rows_task(task, split: str, indices: list[int], name: str):
    """A shallow copy of `task` that scores rows `indices` of its split `split` (in that order) as
    its reported split, named `name` inside it."""
    import datasets

    rows = copy.copy(task)
    rows._config = copy.copy(task.config)
    rows._config.validation_split, rows._config.test_split = name, None
    rows.dataset = datasets.DatasetDict({**task.dataset, name: task.dataset[split].select(indices)})
    return rows


def dev_task(task, indices: list[int]):
    """A shallow copy of `task` that scores the development slice (or any rows of the split it comes
    from, its dev split or else its train split, given by `indices`, in that order) as its reported split."""
    return rows_task(task, DEV_SPLIT if has_dev_split(task) else task.config.training_split, indices, DEV_SPLIT)


def test_block(task, ids: list[int]):
    """A shallow copy of `task` that scores its test examples `ids` (positions among the examples its
    test pass scores, in that order): a test pass read block by block (settle.py). lm-eval numbers
    the block's examples 0, 1, ...: the i-th is test example ids[i]."""
    split = task.config.test_split if task.has_test_docs() else task.config.validation_split
    return rows_task(task, split, ids, TEST_BLOCK)


def dev_tasks(tasks: dict, slices: dict[str, list[int]]) -> dict:
    """{dev/<task>: the task scoring its development slice} for the tasks that have one."""
    return {dev_name(name): dev_task(tasks[name], slices[name]) for name in tasks if slices.get(name)}


@dataclass(frozen=True)
class Pool:
    """Which labelled examples a k-shot prompt may draw its demonstrations from (`eval.fewshot_pool`):
    the whole train split bar the development slice (`size` None), or only the `size` examples an
    adapter with the same `data.max_train_samples` and `seed` trains on (`trained`): a data-size
    sweep's baselines then see exactly its adapters' labelled examples."""
    size: int | None = None
    seed: int = 0


WHOLE_SPLIT = Pool()


def training_order(n_docs: int, max_samples: int | None, seed: int, exclude: set[int] = frozenset()) -> list[int]:
    """Indices of the examples trained on, in training order: a seeded shuffle of the split without
    `exclude` (the development slice), the first `max_samples` of it (None: all)."""
    order = list(range(n_docs))
    random.Random(seed).shuffle(order)
    order = [i for i in order if i not in exclude]
    return order[:max_samples] if max_samples else order


def demonstration_pool(task, dev: list[int], pool: Pool = WHOLE_SPLIT) -> list[dict]:
    """The few-shot pool without the development slice (and, for `Pool(size)`, only the examples
    trained on)."""
    docs = list(task.fewshot_docs())
    if (task.config.fewshot_split or task.config.training_split) != task.config.training_split:
        return docs
    held = held_from_training(task, dev)
    if pool.size:
        return [docs[i] for i in training_order(len(docs), pool.size, pool.seed, held)]
    return [d for i, d in enumerate(docs) if i not in held] if held else docs
