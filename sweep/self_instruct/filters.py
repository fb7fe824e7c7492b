"""Self-Instruct's prompts and filters (Wang et al. 2023, "Self-Instruct: Aligning Language Models
with Self-Generated Instructions"), as in the authors' `bootstrap_instructions.py` and
`generate_instances.py`.

Why our own: the authors' code calls the OpenAI API and is not a library; Alpaca's fork changes
the prompt. These are the paper's rules and prompt formats (in our own words where the paper's
wording is not the method), kept as pure functions so that the generator
(sweep/pipeline/generate.py) can apply them to any model's output and each rule is tested
on its own.
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
    reason: str   # length | unsuitable | write_a_program | punctuation | non_ascii | duplicate | similar |
    #               empty_output | empty_input | copied_input | truncated
    detail: str


def rouge_l(a: str, b: str) -> float:
    return _SCORER.score(a, b)["rougeL"].fmeasure


def closest(instruction: str, pool: list[str]) -> tuple[float, str | None]:
    """(ROUGE-L, text) of the pooled instruction most similar to `instruction`; (0, None) for an empty pool."""
    scored = [(rouge_l(instruction, p), p) for p in pool]
    return max(scored, default=(0.0, None), key=lambda x: x[0])


def check_instruction(instruction: str, pool: list[str]) -> Rejected | None:
    """None if `instruction` may join `pool`, else why not (the paper's rules, cheapest first)."""
    return screen(instruction, pool)[0]


def screen(instruction: str, pool: list[str]) -> tuple[Rejected | None, float | None]:
    """check_instruction's verdict, and the ROUGE-L with the closest pooled instruction when the
    instruction got as far as that check (None before)."""
    words = instruction.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return Rejected("length", f"{len(words)} words (allowed {MIN_WORDS}-{MAX_WORDS})"), None
    for word in UNSUITABLE_WORDS:
        if re.search(rf"\b{re.escape(word)}\b", instruction, flags=re.IGNORECASE):
            return Rejected("unsuitable", f"mentions {word!r}: not a text-only task"), None
    if instruction.startswith("Write a program"):
        return Rejected("write_a_program", "models over-produce 'Write a program' tasks"), None
    if instruction[0] in string.punctuation:
        return Rejected("punctuation", "starts with punctuation"), None
    if not instruction[0].isascii():
        return Rejected("non_ascii", "starts with a non-ASCII character"), None
    if instruction in pool:
        return Rejected("duplicate", "already in the pool"), None
    score, best = closest(instruction, pool)
    if score >= SIMILARITY_LIMIT:
        return Rejected("similar", f"ROUGE-L {score:.2f} with {best!r}"), score
    return None, score


def check_instance(instance_input: str, output: str, classification: bool = False) -> Rejected | None:
    """None if a generated (input, output) instance is usable: an output, not the input copied,
    and for a classification task an input to classify."""
    if not output.strip():
        return Rejected("empty_output", "no output")
    if classification and not instance_input.strip():
        return Rejected("empty_input", "a classification instance with nothing to classify")
    if instance_input.strip() and output.strip() == instance_input.strip():
        return Rejected("copied_input", "the output repeats the input")
    return None


# ---------------------------------------------------------------- classification and instances
NO_INPUT = "<no input>"  # what a task that needs no input shows in an instance prompt
CONTENT_FREE = ("N/A", "", "[MASK]")  # tasks with no content, for calibration (Zhao et al. 2021's choice)


def classification_prompt(examples: list[tuple[str, bool]], instruction: str) -> str:
    """Asks whether `instruction` is a classification task (a small, fixed set of possible
    outputs), after labelled examples; the model's next word is read as Yes or No."""
    head = "Is each task a classification task, whose output is one of a small, fixed set of labels?\n\n"
    shown = "".join(f"Task: {_one_line(text)}\nClassification: {'Yes' if flag else 'No'}\n\n"
                    for text, flag in examples)
    return f"{head}{shown}Task: {_one_line(instruction)}\nClassification:"


def instance_prompt(examples: list[dict], instruction: str, classification: bool) -> str:
    """Asks for one instance of `instruction` after worked examples (seed tasks with `instruction`,
    `input`, `output`). Ordinary tasks are input-first (input, then output); classification tasks
    are output-first (a class label, then an input that has it), as in the paper, so that the
    inputs are not all of the most likely label."""
    if classification:
        head = "For each classification task, name a class label first, then write an input that belongs to it.\n\n"
        shown = "".join(f"Task: {_one_line(e['instruction'])}\nClass label: {e['output'].strip()}\n"
                        f"Input: {e['input'].strip() or NO_INPUT}\n\n" for e in examples)
        return f"{head}{shown}Task: {_one_line(instruction)}\nClass label:"
    head = ("Write an example for each task: its input (or \"" + NO_INPUT + "\" when the task needs none), "
            "then the output.\n\n")
    shown = "".join(f"Task: {_one_line(e['instruction'])}\nInput: {e['input'].strip() or NO_INPUT}\n"
                    f"Output: {e['output'].strip()}\n\n" for e in examples)
    return f"{head}{shown}Task: {_one_line(instruction)}\nInput:"


INSTANCE_END = "\nTask:"  # where a model that goes on to write the next example is cut
FIELD_MARKERS = ("\nTask:", "\nInput:", "\nOutput:", "\nClass label:")


def parse_instance(completion: str, classification: bool) -> tuple[str, str]:
    """(input, output) of the instance a model wrote after `instance_prompt`; empty strings for a
    part it did not write. A second instance the model went on to write is cut off."""
    text = completion.split(INSTANCE_END, 1)[0]
    first, marker = ("output", "\nInput:") if classification else ("input", "\nOutput:")
    head, found, tail = text.partition(marker)
    for other in FIELD_MARKERS:
        tail = tail.split(other, 1)[0]
    head, tail = head.strip(), tail.strip() if found else ""
    if head == NO_INPUT:
        head = ""
    if tail == NO_INPUT:
        tail = ""
    return (tail, head) if first == "output" else (head, tail)
