"""Self-Instruct's prompts and filters (Wang et al. 2023, "Self-Instruct: Aligning Language Models
with Self-Generated Instructions"), as in the authors' `bootstrap_instructions.py` and
`generate_instances.py`.

Why our own: the authors' code calls the OpenAI API and is not a library; Alpaca's fork changes
the prompt. These are the paper's rules, kept as pure functions so that the generator can apply
them to any model's output and each rule is tested on its own. The generation loop that uses
them (batched sampling, rounds, resume, MLflow records) is issue 12's next step.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from rouge_score import rouge_scorer

SIMILARITY_LIMIT = 0.7   # a new instruction is kept only if its ROUGE-L with every pooled one is below this
MIN_WORDS, MAX_WORDS = 4, 150  # the paper drops instructions of 3 words or fewer, or more than 150
# Tasks a text-only model cannot do (the paper's list).
UNSUITABLE_WORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def instruction_prompt(instructions: list[str], classification: bool = False) -> str:
    """The paper's prompt for new instructions: the in-context ones numbered, then the next number
    for the model to continue."""
    head = ("Come up with a series of classification tasks. Try to specify the possible output labels when "
            "possible.\n" if classification else "Come up with a series of tasks:\n")
    lines = [f"{i}. {_one_line(text).rstrip(':')}\n" for i, text in enumerate(instructions, 1)]
    return head + "".join(lines) + f"{len(instructions) + 1}."


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def parse_instructions(completion: str) -> list[str]:
    """The instructions a model wrote after `instruction_prompt`: the first one continues the
    prompt's last number, later ones are numbered on their own lines."""
    parts = re.split(r"\n\d+\s?\. ", completion)
    return [_one_line(p) for p in parts if p.strip()]


@dataclass(frozen=True)
class Rejected:
    reason: str   # length | unsuitable | write_a_program | punctuation | non_ascii | duplicate | similar
    detail: str


def rouge_l(a: str, b: str) -> float:
    return _SCORER.score(a, b)["rougeL"].fmeasure


def check_instruction(instruction: str, pool: list[str]) -> Rejected | None:
    """None if `instruction` may join `pool`, else why not (the paper's rules, cheapest first)."""
    words = instruction.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return Rejected("length", f"{len(words)} words (allowed {MIN_WORDS}-{MAX_WORDS})")
    for word in UNSUITABLE_WORDS:
        if re.search(rf"\b{re.escape(word)}\b", instruction, flags=re.IGNORECASE):
            return Rejected("unsuitable", f"mentions {word!r}: not a text-only task")
    if instruction.startswith("Write a program"):
        return Rejected("write_a_program", "models over-produce 'Write a program' tasks")
    if instruction[0] in string.punctuation:
        return Rejected("punctuation", "starts with punctuation")
    if not instruction[0].isascii():
        return Rejected("non_ascii", "starts with a non-ASCII character")
    if instruction in pool:
        return Rejected("duplicate", "already in the pool")
    best = max(pool, key=lambda p: rouge_l(instruction, p), default=None)
    if best is not None and (score := rouge_l(instruction, best)) >= SIMILARITY_LIMIT:
        return Rejected("similar", f"ROUGE-L {score:.2f} with {best!r}")
    return None


def check_instance(instance_input: str, output: str) -> Rejected | None:
    """None if a generated (input, output) instance is usable: an output, and not the input copied."""
    if not output.strip():
        return Rejected("empty_output", "no output")
    if instance_input.strip() and output.strip() == instance_input.strip():
        return Rejected("copied_input", "the output repeats the input")
    return None
