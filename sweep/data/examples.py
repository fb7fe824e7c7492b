"""Training examples, rendered and tokenized exactly the way lm-eval scores them.

The prompt template of a dataset is its lm-eval task (tasks/*.yaml, one variant per
`eval.template`): training renders each document with the task's own `fewshot_context(doc, 0)`
(through the model's chat template when the variant is a chat one) and answer (target delimiter +
choice, or the reference text for generation tasks), and tokenizes the pair with lm-eval's own
`_encode_pair`. So training and scoring cannot drift apart. The loss covers the answer only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import RUN_ID, ConfigError
from sweep.data.splits import DEV_SPLIT, training_order
from sweep.vocabulary import GENERATED_DIR, GENERATED_SHA_TAG, GENERATED_TASKS

IGNORE_INDEX = -100  # label value that the loss skips (prompt tokens, padding)
GENERATED_FIELDS = ("instruction", "input", "output")  # what a generated task must have (Self-Instruct's format)
GENERATED_DATASET = "self_instruct_generated"  # its name as an MLflow dataset
# A generate_instructions.py run holds its tasks as GENERATED_DIR/TASKS_FILE, their sha256 in tag GENERATED_SHA_TAG.
TASKS_FILE = GENERATED_TASKS  # (the generator's own folder names its file the same)


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


def check_split(task, split: str) -> None:
    """ConfigError unless `split` is one of the task's splits and holds examples."""
    if split not in task.dataset:
        raise ConfigError(f"data.train_split={split!r}: task {task.config.task} has splits {', '.join(task.dataset)}")
    held = {task.config.validation_split: "test", task.config.test_split: "test", DEV_SPLIT: "development"}
    if split in held and split != task.config.training_split:
        raise ConfigError(f"data.train_split={split}: that is task {task.config.task}'s {held[split]} split, which "
                          f"nothing may train on; train on {task.config.training_split}")
    if len(task.dataset[split]) == 0:
        raise ConfigError(f"data.train_split={split!r} of task {task.config.task} is empty")


def training_pairs(task, split: str, max_samples: int | None, seed: int, chat_template=None,
                   generated: list[dict] | None = None, mix: float = 0.0,
                   exclude: set[int] = frozenset()) -> list[tuple[str, str]]:
    """A seeded random subset (or all) of a task split, rendered to (context, answer) pairs;
    with `generated` documents, a seeded mix of both (`mix`: the generated share). `exclude`:
    indices never trained on (the development slice)."""
    check_split(task, split)
    docs = task.dataset[split]
    if generated is not None:
        hand = [d for i, d in enumerate(docs) if i not in exclude]
        return [render_pair(task, doc, chat_template) for doc in mixed_docs(hand, generated, mix, max_samples, seed)]
    return [render_pair(task, docs[i], chat_template) for i in training_order(len(docs), max_samples, seed, exclude)]


def mixed_docs(hand: list[dict], generated: list[dict], mix: float, max_samples: int | None, seed: int) -> list[dict]:
    """round(mix * n) generated documents and n minus that hand-written ones, each a seeded random
    subset, shuffled together; n = max_samples, or as many as the two sources allow at this mix."""
    if mix == 0:
        n_generated, n_hand = 0, min(max_samples or len(hand), len(hand))
    elif mix == 1:
        n_generated, n_hand = min(max_samples or len(generated), len(generated)), 0
    else:
        n = max_samples or int(min(len(hand) / (1 - mix), len(generated) / mix))
        n_generated = round(mix * n)
        n_hand = n - n_generated
    if n_generated > len(generated) or n_hand > len(hand) or n_generated + n_hand == 0:
        raise ConfigError(f"data.mix={mix} of data.max_train_samples={max_samples} needs {n_generated} generated and "
                          f"{n_hand} hand-written examples; there are {len(generated)} and {len(hand)}: lower "
                          f"data.max_train_samples or generate more")
    rng = random.Random(seed)
    chosen = rng.sample(hand, n_hand) + rng.sample(generated, n_generated)
    rng.shuffle(chosen)
    return chosen


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


def build_train_dataset(task, data_cfg: DictConfig, lm, max_length: int, seed: int, chat: bool = False,
                        generated: list[dict] | None = None, exclude: set[int] = frozenset()):
    """A datasets.Dataset of tokenized training examples for `task` (`chat`: its template is a chat
    one; `generated`: documents to mix in at `data.mix`; `exclude`: indices never trained on)."""
    import datasets

    pairs = training_pairs(task, data_cfg.train_split, data_cfg.max_train_samples, seed,
                           lm.apply_chat_template if chat else None, generated, data_cfg.get("mix", 0.0), exclude)
    if task.OUTPUT_TYPE == "generate_until":  # learn the reply and to stop, after the prompt as generation sees it
        return datasets.Dataset.from_list(tokenize_pairs(pairs, generation_encoder(lm), max_length,
                                                         lm.tokenizer.eos_token_id))
    return datasets.Dataset.from_list(tokenize_pairs(pairs, lm._encode_pair, max_length))


def generation_encoder(lm):
    """(prompt, reply) -> token ids, for generation tasks: the prompt tokenized alone, as lm-eval's
    generate_until feeds it to the model, and the reply after it. (lm-eval's `_encode_pair`, right
    for scoring choices, moves the prompt's trailing whitespace into the reply: with a chat template
    the newline after the assistant's header would be trained on as part of the reply.)"""
    return lambda context, answer: (lm.tok_encode(context), lm.tok_encode(answer, add_special_tokens=False))


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


def dataset_inputs(tasks: dict, eval_tasks: list[str], trained: tuple[str, str] | None) -> list[tuple[str, Path, str]]:
    """(name, file, context) of what a job reads: the split it trains on (`trained`: task, split) and
    the split each eval task reports on (what the MLflow runs table shows in its Dataset column)."""
    out = []
    if trained is not None and trained[0] in tasks:
        task, split = trained
        out.append((f"{task}/{split}", split_file(tasks[task], split), "training"))
    for name in eval_tasks:
        split = tasks[name].config.test_split or tasks[name].config.validation_split
        out.append((f"{name}/{split}", split_file(tasks[name], split), "evaluation"))
    return [d for d in out if d[1] is not None]


# ---------------------------------------------------------------- generated instruction data


def generated_file(data_cfg: DictConfig, tracking_uri: str, cache: str | Path) -> Path | None:
    """The file of generated tasks `data.generated` names: a JSONL path, or the MLflow run id of a
    generate_instructions.py run (its `generated/tasks.jsonl`, fetched once into the cache and
    checked against the sha256 the run recorded). None when no generated data is asked for."""
    spec = data_cfg.get("generated")
    if spec is None:
        return None
    spec = str(spec)
    if Path(spec).is_file():
        return Path(spec)
    if not RUN_ID.fullmatch(spec):
        raise ConfigError(f"data.generated={spec!r}: no such file, and not an MLflow run id; run `python "
                          f"generate_instructions.py` first, or give the run id it printed or its tasks.jsonl")
    return _fetch_generated(spec, tracking_uri, Path(cache) / "generated" / spec)


def _fetch_generated(run_id: str, tracking_uri: str, folder: Path) -> Path:
    from sweep.tracking import reuse

    store = reuse.client(tracking_uri)
    run = reuse.run_by_id(store, run_id, "data.generated", tracking_uri)
    expected = run.data.tags.get(GENERATED_SHA_TAG)
    if expected is None or run.info.status != "FINISHED":
        raise ConfigError(f"data.generated={run_id}: run {run.info.status.lower()} without a generated dataset "
                          f"(tag {GENERATED_SHA_TAG}); finish it by rerunning its generate_instructions.py command")
    path = reuse.verified_copy(store, run_id, f"{GENERATED_DIR}/{TASKS_FILE}", expected, folder)
    if path is None:
        raise ConfigError(f"data.generated={run_id}: the run's {TASKS_FILE} does not match the sha256 it recorded; "
                          f"the store was changed after the run: generate again")
    return path


def json_lines(path: Path, fix: str, whole_lines_only: bool = False) -> list[tuple[int, object]]:
    """(line number, value) of each non-empty line of a JSONL file; a line that is not JSON is a
    ConfigError naming file:line and `fix`. `whole_lines_only`: a last line without its newline (a
    write cut short by a kill) is dropped."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if whole_lines_only and lines and not lines[-1].endswith("\n"):
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg}); {fix}") from None
    return out


def read_generated(path: Path) -> list[dict]:
    """Generated tasks: JSON objects with string instruction, input and output (the store is
    untrusted: nothing else is read from it, and every value is checked to be text)."""
    rows = []
    for n, row in json_lines(path, "fix data.generated"):
        if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in GENERATED_FIELDS)):
            raise ConfigError(f"data.generated: {path}:{n}: needs text fields {', '.join(GENERATED_FIELDS)}")
        rows.append({k: row[k] for k in GENERATED_FIELDS})
    if not rows:
        raise ConfigError(f"data.generated: {path} holds no tasks (every candidate was filtered out?); "
                          f"generate more rounds or use another run")
    return rows

