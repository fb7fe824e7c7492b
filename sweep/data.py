"""Training examples, rendered and tokenized exactly the way lm-eval scores them.

The prompt template of a dataset is its lm-eval task (tasks/*.yaml, one variant per
`eval.template`): training renders each document with the task's own `fewshot_context(doc, 0)`
(through the model's chat template when the variant is a chat one) and answer (target delimiter +
choice, or the reference text for generation tasks), and tokenizes the pair with lm-eval's own
`_encode_pair`. So training and scoring cannot drift apart. The loss covers the answer only.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import ConfigError

IGNORE_INDEX = -100  # label value that the loss skips (prompt tokens, padding)


def render_pair(task, doc: dict, chat_template=None) -> tuple[str, str]:
    """(context, answer) for one document, exactly as lm-eval builds the scored request (the
    correct choice's, for multiple choice); `chat_template`: lm-eval's `lm.apply_chat_template`
    for a chat variant."""
    chat = chat_template is not None
    context = task.fewshot_context(doc, 0, apply_chat_template=chat, chat_template=chat_template,
                                   gen_prefix=task.doc_to_prefix(doc))
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice" and isinstance(target, int):
        requests = task.construct_requests(doc, context, metadata=(task.config.task, 0, 1), apply_chat_template=chat)
        return requests[target].args
    answer = target if isinstance(target, str) else str(target)
    return context, task.config.target_delimiter + answer


def training_pairs(task, split: str, max_samples: int | None, seed: int,
                   chat_template=None) -> list[tuple[str, str]]:
    """A seeded random subset (or all) of a task split, rendered to (context, answer) pairs."""
    if split not in task.dataset:
        raise ConfigError(f"data.train_split={split!r}: task {task.config.task} has splits {', '.join(task.dataset)}")
    docs = task.dataset[split]
    if len(docs) == 0:
        raise ConfigError(f"data.train_split={split!r} of task {task.config.task} is empty")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    if max_samples:
        order = order[:max_samples]
    return [render_pair(task, docs[i], chat_template) for i in order]


def tokenize_pairs(pairs, encode_pair, max_length: int, eos_id: int | None = None) -> list[dict]:
    """input_ids/labels per pair; prompt tokens masked; over-long prompts cut from the left."""
    rows = []
    for context, answer in pairs:
        ctx, ans = encode_pair(context, answer)
        if eos_id is not None:
            ans = [*ans, eos_id]
        ctx = ctx[max(0, len(ctx) + len(ans) - max_length):]
        rows.append({"input_ids": ctx + ans, "labels": [IGNORE_INDEX] * len(ctx) + ans})
    return rows


def build_train_dataset(task, data_cfg: DictConfig, lm, max_length: int, seed: int, chat: bool = False):
    """A datasets.Dataset of tokenized training examples for `task` (`chat`: its template is a chat one)."""
    import datasets

    pairs = training_pairs(task, data_cfg.train_split, data_cfg.max_train_samples, seed,
                           lm.apply_chat_template if chat else None)
    # Generation tasks learn to stop; choice tasks are scored on the answer tokens alone.
    eos = lm.tokenizer.eos_token_id if task.OUTPUT_TYPE == "generate_until" else None
    return datasets.Dataset.from_list(tokenize_pairs(pairs, lm._encode_pair, max_length, eos))


def data_files(task) -> list[Path]:
    """The local files a project task reads (empty for tasks that load from elsewhere)."""
    kwargs = task.config.dataset_kwargs or {}
    data_dir = Path((task.config.metadata or {}).get("data_dir", "."))
    return [data_dir / f for f in (kwargs.get("data_files") or {}).values()]


def split_file(task, split: str | None) -> Path | None:
    """The local file of one split of a project task (None when it has none)."""
    files = (task.config.dataset_kwargs or {}).get("data_files") or {}
    data_dir = Path((task.config.metadata or {}).get("data_dir", "."))
    return data_dir / files[split] if split in files else None


def dataset_inputs(cfg: DictConfig, tasks: dict) -> list[tuple[str, Path, str]]:
    """(name, file, context) of what a job reads: the split it trains on and the split each eval
    task reports on (what the MLflow runs table shows in its Dataset column)."""
    out = []
    if cfg.method.trains and cfg.data.task in tasks:
        out.append((f"{cfg.data.task}/{cfg.data.train_split}", split_file(tasks[cfg.data.task], cfg.data.train_split),
                    "training"))
    for name in cfg.eval.tasks:
        split = tasks[name].config.test_split or tasks[name].config.validation_split
        out.append((f"{name}/{split}", split_file(tasks[name], split), "evaluation"))
    return [d for d in out if d[1] is not None]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
