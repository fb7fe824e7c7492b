"""One Self-Instruct round: new instructions from in-context examples, filtered, classified and
given an instance; seeded by (seed, round) so that a resumed run writes what an uninterrupted one
would have."""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from omegaconf import DictConfig

from sweep.self_instruct import filters as si
from sweep.self_instruct.sampling import classify

log = logging.getLogger(__name__)


# Worked examples in an instance prompt are seed tasks whose input and output fit in this many
# characters: the prompt's prefill is most of a round's time on a CPU, and long examples buy little.
SHORT_EXAMPLE_CHARS = 400


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
