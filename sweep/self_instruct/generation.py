"""Self-Instruct's bootstrap loop (Wang et al. 2023) with any model the harness loads:
`python generate_instructions.py` (config: conf/generate_instructions.yaml).

Each round: new instructions are sampled from prompts of 8 in-context instructions (6 from the
hand-written seed pool, 2 from the generated pool once it has two), filtered (sweep/self_instruct/filters.py:
length, keywords, duplicates, ROUGE-L >= 0.7 with any pooled instruction), asked whether they are
classification tasks, and given an instance: input-first for ordinary tasks, output-first for
classification tasks; instances with no output, or the input copied, are dropped.

Why our own loop: the authors' scripts call the OpenAI API; here the model is a local causal LM
sampled with transformers' `generate` (batched, KV cache, seeded). A round is the unit of
progress: its tasks and then its record are appended to the output folder and fsynced, so a killed
run continues from the last whole round when the same command is run again, and each round is
seeded by (seed, round), so a resumed run writes what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError
from sweep.data.examples import (
    ARTIFACT_DIR,
    GENERATED_DATASET,
    SHA_TAG,
    TASKS_FILE,
    json_lines,
)
from sweep.data.examples import GENERATED_FIELDS as FIELDS
from sweep.self_instruct import filters as si

log = logging.getLogger(__name__)
ROUNDS_FILE, SETTINGS_FILE, RUN_FILE = "rounds.jsonl", "settings.json", "run.json"
# Worked examples in an instance prompt are seed tasks whose input and output fit in this many
# characters: the prompt's prefill is most of a round's time on a CPU, and long examples buy little.
SHORT_EXAMPLE_CHARS = 400
RESUMABLE = ("rounds",)  # settings that may change between a killed run and its continuation


# ---------------------------------------------------------------- the model side
@dataclass
class Completion:
    text: str
    truncated: bool  # stopped by the token limit, not by an end of sequence or a stop string


class ModelSampler:
    """Batched, seeded sampling from a causal LM through transformers' `generate` (KV cache on),
    and the next-token choice between two words (classification identification)."""

    def __init__(self, model, tokenizer, temperature: float, top_p: float, batch_size: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.temperature, self.top_p, self.batch_size = temperature, top_p, batch_size
        self.tokens, self.seconds = 0, 0.0  # generated tokens and the time spent generating them

    def _encode(self, prompts: list[str]):
        self.tokenizer.padding_side = "left"  # a batch's prompts end together, where generation starts
        return self.tokenizer(prompts, return_tensors="pt", padding=True)

    def complete(self, prompts: list[str], max_new_tokens: int, seed: int, stop: list[str]) -> list[Completion]:
        import torch

        out = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self._encode(prompts[start:start + self.batch_size])
            torch.manual_seed(seed * 100_003 + start)
            began = time.perf_counter()
            with torch.inference_mode():
                ids = self.model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=self.temperature > 0,
                    temperature=self.temperature if self.temperature > 0 else None,
                    top_p=self.top_p if self.temperature > 0 else None, use_cache=True,
                    pad_token_id=self.tokenizer.pad_token_id, stop_strings=stop or None,
                    tokenizer=self.tokenizer if stop else None)
            self.seconds += time.perf_counter() - began
            for row in ids[:, batch["input_ids"].shape[1]:].tolist():
                kept = row[:row.index(self.tokenizer.eos_token_id)] if self.tokenizer.eos_token_id in row else row
                kept = [t for t in kept if t != self.tokenizer.pad_token_id]
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                self.tokens += len(kept)
                ended = self.tokenizer.eos_token_id in row or any(text.rstrip(" ").endswith(s.strip(" ")) for s in stop)
                out.append(Completion(text, truncated=len(row) >= max_new_tokens and not ended))
        return out

    def margins(self, prompts: list[str], first: str, second: str) -> list[float]:
        """How much likelier the model's next token after each prompt is `first` than `second`
        (log-odds of the first token of each word, after a space)."""
        import torch

        a, b = (self.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in (first, second))
        out = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self._encode(prompts[start:start + self.batch_size])
            with torch.inference_mode():
                logits = self.model(**batch).logits[:, -1, :].float()
            out += (logits[:, a] - logits[:, b]).tolist()
        return out


def classify(sampler, examples: list[list[tuple[str, bool]]], instructions: list[str], calibrate: bool) -> list[bool]:
    """Whether each instruction is a classification task: the model's Yes against No after
    labelled examples. `calibrate`: against the same prompt with content-free tasks instead
    (contextual calibration, Zhao et al. 2021), which removes the prompt's own lean to one answer
    (SmolLM2-135M answers No to every one of the 25 held-out seed tasks without it)."""
    margins = sampler.margins([si.classification_prompt(ex, text) for ex, text in zip(examples, instructions)],
                              "Yes", "No")
    if not calibrate:
        return [m > 0 for m in margins]
    free = sampler.margins([si.classification_prompt(ex, cf) for ex in examples for cf in si.CONTENT_FREE], "Yes", "No")
    k = len(si.CONTENT_FREE)
    return [m - sum(free[i * k:(i + 1) * k]) / k > 0 for i, m in enumerate(margins)]


# ---------------------------------------------------------------- one round
@dataclass
class Round:
    number: int
    candidates: int = 0                     # instructions parsed from the model's lists
    tasks: list[dict] = field(default_factory=list)  # accepted, with an instance
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    similarity: list[float] = field(default_factory=list)  # best ROUGE-L of each candidate vs the pool
    classification: int = 0
    seconds: float = 0.0
    tokens: int = 0

    def record(self, pool_size: int) -> dict:
        return {"round": self.number, "candidates": self.candidates, "accepted": len(self.tasks),
                "classification": self.classification, "pool_size": pool_size, "rejected": dict(self.rejected),
                "similarity": [round(s, 4) for s in self.similarity], "seconds": round(self.seconds, 3),
                "tokens": self.tokens}


def in_context(rng: random.Random, seeds: list[str], generated: list[str], k: int, from_generated: int) -> list[str]:
    """k instructions for a prompt: `from_generated` of them from the generated pool once it has
    that many, the rest from the seed pool, shuffled."""
    mine = rng.sample(generated, from_generated) if len(generated) >= from_generated else []
    chosen = rng.sample(seeds, k - len(mine)) + mine
    rng.shuffle(chosen)
    return chosen


def generate_round(number: int, g: DictConfig, seed: int, sampler, seed_tasks: list[dict],
                   generated: list[dict]) -> Round:
    """One round of the loop; `generated`: the tasks of the earlier rounds."""
    began, tokens_before = time.perf_counter(), sampler.tokens
    rng = random.Random(f"{seed}-{number}")
    r = Round(number)
    new = new_instructions(r, rng, g, seed, sampler, seed_tasks, generated)
    if new:
        add_instances(r, rng, g, seed, sampler, seed_tasks, new)
    r.seconds, r.tokens = time.perf_counter() - began, sampler.tokens - tokens_before
    return r


def new_instructions(r: Round, rng: random.Random, g: DictConfig, seed: int, sampler, seed_tasks: list[dict],
                     generated: list[dict]) -> list[str]:
    """The round's sampled instructions that pass the filters (the others counted in `r`)."""
    seed_texts = [t["instruction"] for t in seed_tasks]
    generated_texts = [t["instruction"] for t in generated]
    prompts = [si.instruction_prompt(in_context(rng, seed_texts, generated_texts, g.in_context, g.from_generated))
               for _ in range(g.prompts_per_round)]
    pool = seed_texts + generated_texts
    new: list[str] = []
    for completion in sampler.complete(prompts, g.max_new_tokens, seed=seed * 1000 + r.number, stop=["\n\n"]):
        parsed = si.parse_instructions(completion.text)
        if completion.truncated and parsed:  # the last one was cut off mid-sentence
            parsed.pop()
            r.rejected["truncated"] += 1
        for instruction in parsed:
            r.candidates += 1
            reason, similarity = si.screen(instruction, pool + new)
            if similarity is not None:
                r.similarity.append(similarity)
            if reason is not None:
                r.rejected[reason.reason] += 1
                continue
            new.append(instruction)
    return new


def add_instances(r: Round, rng: random.Random, g: DictConfig, seed: int, sampler, seed_tasks: list[dict],
                  new: list[str]) -> None:
    """Classify each new instruction, generate its instance, and keep the usable tasks in `r`."""
    number = r.number
    labelled = [(t["instruction"], bool(t["is_classification"])) for t in seed_tasks]
    examples = [rng.sample(labelled, g.in_context) for _ in new]
    flags = classify(sampler, examples, new, g.calibrate_classification)
    short = [t for t in seed_tasks if len(t["input"]) + len(t["output"]) <= SHORT_EXAMPLE_CHARS] or seed_tasks
    by_kind = {kind: [t for t in short if bool(t["is_classification"]) == kind] or short for kind in (True, False)}
    instance_prompts = [si.instance_prompt(rng.sample(by_kind[flag], min(g.instance_examples, len(by_kind[flag]))),
                                           text, flag) for text, flag in zip(new, flags)]
    completions = sampler.complete(instance_prompts, g.instance_max_new_tokens, seed=seed * 1000 + number + 500,
                                   stop=[si.INSTANCE_END])
    for k, (text, flag, completion) in enumerate(zip(new, flags, completions)):
        instance_input, output = si.parse_instance(completion.text, flag)
        reason = si.check_instance(instance_input, output, flag)
        if reason is not None:
            r.rejected[reason.reason] += 1
            continue
        r.classification += flag
        r.tasks.append({"id": f"generated_{number}_{k}", "name": f"generated_{number}_{k}", "instruction": text,
                        "input": instance_input, "output": output, "is_classification": flag, "round": number})


def generate_rounds(g: DictConfig, seed: int, sampler, seed_tasks: list[dict], state: State, on_round=None) -> None:
    """The rounds after the folder's last whole one, up to generation.rounds, each committed to
    the folder as it ends (then handed to `on_round`)."""
    from tqdm import tqdm

    done = len(state.rounds)
    for number in tqdm(range(done + 1, g.rounds + 1), desc="Self-Instruct rounds", initial=done, total=g.rounds):
        record = state.add(generate_round(number, g, seed, sampler, seed_tasks, state.tasks))
        log.info("round %d: %d of %d candidates kept, pool %d", number, record["accepted"], record["candidates"],
                 record["pool_size"])
        if on_round:
            on_round(record)


# ---------------------------------------------------------------- the folder a run resumes from
def settings_of(cfg: DictConfig) -> dict:
    """What makes two runs the same generation (the model, the seed, the loop's settings)."""
    g = OmegaConf.to_container(cfg.generation, resolve=True)
    return {"model": cfg.model.name, "name_or_path": cfg.model.name_or_path, "seed": cfg.seed,
            **{k: v for k, v in g.items() if k not in ("output_dir", *RESUMABLE)}}


@dataclass
class State:
    folder: Path
    tasks: list[dict]
    rounds: list[dict]
    run_id: str | None

    @classmethod
    def open(cls, folder: Path, settings: dict) -> State:
        """The folder's whole rounds (a round cut short by a kill is dropped), or a new one."""
        check_folder(folder, settings)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SETTINGS_FILE).is_file():
            _write(folder / SETTINGS_FILE, json.dumps(settings, indent=1, sort_keys=True) + "\n")
        rounds = _rows(folder / ROUNDS_FILE, ["round"])
        done = len(rounds)
        tasks = _rows(folder / TASKS_FILE, [*FIELDS, "round"])
        whole = [t for t in tasks if t["round"] <= done]
        if len(whole) < len(tasks):
            log.info("dropping %d task(s) of round %d, cut short by a kill", len(tasks) - len(whole), done + 1)
        for name, rows in ((TASKS_FILE, whole), (ROUNDS_FILE, rounds)):  # without what a kill cut short
            text = "".join(json.dumps(row) + "\n" for row in rows)
            if (folder / name).is_file() and (folder / name).read_text(encoding="utf-8") != text:
                _write(folder / name, text)
        run_file = folder / RUN_FILE
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        return cls(folder, whole, rounds, run_id)

    def add(self, r: Round) -> dict:
        """Append a round: its tasks, then its record (the commit point), each fsynced."""
        _append(self.folder / TASKS_FILE, "".join(json.dumps(t) + "\n" for t in r.tasks))
        self.tasks += r.tasks
        record = r.record(pool_size=len(self.tasks))
        _append(self.folder / ROUNDS_FILE, json.dumps(record) + "\n")
        self.rounds.append(record)
        return record

    def remember_run(self, run_id: str) -> None:
        self.run_id = run_id
        _write(self.folder / RUN_FILE, json.dumps({"run_id": run_id}) + "\n")


def check_folder(folder: Path, settings: dict) -> None:
    """A folder may be continued only by the generation that wrote it."""
    settings_file = folder / SETTINGS_FILE
    if not settings_file.is_file():
        return
    stored = json.loads(settings_file.read_text())
    changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
    if changed:
        raise ConfigError(f"generation.output_dir={folder} holds a generation with other settings "
                          f"({', '.join(changed)}); choose another generation.output_dir or delete it")


def _rows(path: Path, fields: list[str], fix: str | None = None) -> list[dict]:
    """The JSON objects of a JSONL file, each with `fields`; a last line cut short by a kill is
    dropped. `fix`: what the one-line error tells the user to do (default: start the folder again)."""
    if not path.is_file():
        return []
    fix = fix or f"delete generation.output_dir={path.parent} to start again"
    rows = []
    for n, row in json_lines(path, fix, whole_lines_only=True):
        missing = [f for f in fields if not isinstance(row, dict) or f not in row]
        if missing:
            raise ConfigError(f"{path}:{n}: missing field {missing[0]!r}; {fix}")
        rows.append(row)
    return rows


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# ---------------------------------------------------------------- summaries
def round_metrics(record: dict) -> dict[str, float]:
    candidates = record["candidates"]
    return {"pool_size": record["pool_size"], "candidates": candidates, "accepted": record["accepted"],
            "acceptance_rate": record["accepted"] / candidates if candidates else 0.0,
            "classification": record["classification"],
            "generation_tokens_per_second": record["tokens"] / record["seconds"] if record["seconds"] else 0.0,
            **{f"rejected/{k}": v for k, v in record["rejected"].items()}}


def totals(rounds: list[dict]) -> dict[str, float]:
    candidates = sum(r["candidates"] for r in rounds)
    accepted = sum(r["accepted"] for r in rounds)
    seconds = sum(r["seconds"] for r in rounds)
    rejected = Counter()
    for r in rounds:
        rejected.update(r["rejected"])
    return {"total/candidates": candidates, "total/accepted": accepted,
            "total/acceptance_rate": accepted / candidates if candidates else 0.0,
            "total/instructions_per_minute": 60 * accepted / seconds if seconds else 0.0,
            "total/generation_tokens_per_second": sum(r["tokens"] for r in rounds) / seconds if seconds else 0.0,
            "total/seconds": seconds, **{f"total/rejected/{k}": v for k, v in rejected.items()}}


def data_card(cfg: DictConfig, state: State, sha256: str, seed_count: int) -> str:
    t = totals(state.rounds)
    reasons = "\n".join(f"| {k.split('/')[-1]} | {int(v)} |" for k, v in sorted(t.items())
                        if k.startswith("total/rejected/"))
    g = cfg.generation
    classification = sum(bool(x["is_classification"]) for x in state.tasks)
    return f"""# Self-Instruct data generated by {cfg.model.name}

- Source model: `{cfg.model.name}`; seed {cfg.seed}; temperature {g.temperature}, top-p {g.top_p}.
- Seed pool: the {seed_count} hand-written tasks of `{Path(g.seed_file).name}`
  (Self-Instruct's seed tasks, train split; the validation split is never shown to the model).
- Loop: {len(state.rounds)} rounds of {g.prompts_per_round} prompts, {g.in_context} in-context instructions each
  ({g.from_generated} from the generated pool once it has them); instances input-first, output-first for
  classification tasks.
- Filters: {si.MIN_WORDS}-{si.MAX_WORDS} words; no mention of {", ".join(si.UNSUITABLE_WORDS)}; not "Write a
  program"; no leading punctuation or non-ASCII; no exact duplicate; ROUGE-L < {si.SIMILARITY_LIMIT} with every pooled
  instruction; an output that is not the input copied (and an input for classification tasks).
- Counts: {int(t['total/candidates'])} candidate instructions, {int(t['total/accepted'])} tasks kept
  (acceptance {t['total/acceptance_rate']:.1%}), {classification} classification.
- File: `{TASKS_FILE}`, sha256 `{sha256}`; fields {", ".join(("id", "name", *FIELDS, "is_classification", "round"))}.

| rejected because | count |
| --- | ---: |
{reasons}
"""


def similarity_plot(rounds: list[dict], path: Path) -> None:
    """Histogram of each candidate's ROUGE-L with its most similar pooled instruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [v for r in rounds for v in r["similarity"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(values, bins=[i / 20 for i in range(21)], color="tab:blue")
    ax.axvline(si.SIMILARITY_LIMIT, color="tab:red", linestyle="--", label="kept below")
    ax.set_xlabel("ROUGE-L with the most similar pooled instruction")
    ax.set_ylabel("candidates")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the job
def validate_config(cfg: DictConfig) -> None:
    """Everything checkable without loading anything: the loop's keys, the model's, the folder's settings."""
    from sweep.config import validate_generation, validate_model

    validate_generation(cfg)
    validate_model(cfg.model)
    check_folder(Path(cfg.generation.output_dir), settings_of(cfg))


def load_seed_tasks(path: str | Path, in_context: int) -> list[dict]:
    tasks = _rows(Path(path), [*FIELDS, "is_classification"], fix="fix generation.seed_file")
    if len(tasks) < in_context:
        raise ConfigError(f"generation.seed_file={path}: {len(tasks)} tasks, fewer than generation.in_context="
                          f"{in_context}; give more seed tasks or lower generation.in_context")
    return tasks


def run(cfg: DictConfig) -> dict[str, float]:
    """Generate (or continue generating) into generation.output_dir, recording to MLflow."""
    import mlflow

    from sweep import tracking
    from sweep.runtime import interrupts, memory, processes
    from sweep.runtime.hydra_job import use_all_cores
    from sweep.training.models import load_model_and_tokenizer

    validate_config(cfg)
    seed_tasks = load_seed_tasks(cfg.generation.seed_file, cfg.generation.in_context)
    experiment_id = tracking.open_experiment(cfg.tracking)
    state = State.open(Path(cfg.generation.output_dir), settings_of(cfg))
    tracking.close_orphaned_runs(experiment_id)
    interrupts.install_signal_handlers()
    memory.map_large_blocks()
    use_all_cores()
    model, tokenizer = load_model_and_tokenizer(cfg.model, Path(cfg.paths.cache), cfg.seed)
    g = cfg.generation
    sampler = ModelSampler(model, tokenizer, g.temperature, g.top_p, g.batch_size)
    tags = {"model": cfg.model.name, "seed": str(cfg.seed), "method": "self_instruct_generation",
            "generation_dir": str(state.folder)} | processes.owner_tags()
    resumed = state.run_id if state.run_id and _exists(state.run_id) else None
    with tracking.mlflow_run(experiment_id, f"self-instruct-{cfg.model.name}-seed{cfg.seed}", tags,
                             resume_run_id=resumed) as run:
        state.remember_run(run.info.run_id)
        if resumed is None:
            tracking.log_inputs(cfg, [Path(g.seed_file)], [("self_instruct/seed", Path(g.seed_file), "seed")])
        else:
            log.info("continuing run %s from round %d", resumed, len(state.rounds) + 1)
            if "error" in run.data.tags:  # (left by whoever closed it when its process died)
                mlflow.MlflowClient().delete_tag(resumed, "error")
        generate_rounds(g, cfg.seed, sampler, seed_tasks, state,
                        on_round=lambda record: tracking.log_metrics(round_metrics(record), step=record["round"]))
        metrics = totals(state.rounds)
        record_dataset(cfg, state, len(seed_tasks))
        tracking.log_metrics(metrics)
    return metrics


def _exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def record_dataset(cfg: DictConfig, state: State, seed_count: int) -> None:
    """The generated set as the run's artifact and MLflow dataset (digest, source), with its data
    card, the per-round records and the similarity histogram."""
    import mlflow
    import pandas as pd

    from sweep import tracking
    from sweep.runtime import interrupts
    from sweep.runtime.files import sha256

    path = state.folder / TASKS_FILE
    path.touch()
    digest = sha256(path)
    card = data_card(cfg, state, digest, seed_count)
    _write(state.folder / "data_card.md", card)
    similarity_plot(state.rounds, state.folder / "similarity.png")
    frame = pd.DataFrame(state.tasks, columns=["id", "name", *FIELDS, "is_classification", "round"])
    dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=GENERATED_DATASET)
    with interrupts.atomic_write():
        tracking.log_input(dataset, "generated")
        for name in (TASKS_FILE, ROUNDS_FILE, "data_card.md", "similarity.png"):
            mlflow.log_artifact(str(state.folder / name), ARTIFACT_DIR)
        mlflow.set_tag(SHA_TAG, digest)


def main(cfg: DictConfig) -> dict[str, float] | None:
    """The entry point's job: bad input is one line and exit status 2, with nothing created."""
    from sweep.runtime.hydra_job import report_bad_input
    from sweep.runtime.secrets import guard_output

    guard_output()
    try:
        return run(cfg)
    except ConfigError as e:
        report_bad_input(e, single_run=True)
