"""Searched instructions (`method.search.instructions=N`): candidate task instructions proposed by
the model under test from the train role's labelled examples, in the manner of APE (Zhou et al.
2023, "Large Language Models Are Human-Level Prompt Engineers": forward generation from
input-output pairs, then resampling a variation of the best), each raced on the development slice
as one more dimension of the strongest baseline's search. The instruction replaces the template's
own (lm-eval's `description`, the system turn with the chat template); `eval.instruction` sets one
by hand, which is how the chosen variant is reproduced.

Why our own: DSPy's and MLflow's prompt optimisers need a hosted or served model and their own
program abstractions; APE's two prompts over the model we already hold are a few lines, and the
choice among the candidates is the race's, on development examples only.
"""

from __future__ import annotations

import random
import re

# APE's forward-generation template: the model completes "The instruction was to ...".
PROPOSE = ("I gave a friend an instruction and some inputs. The friend read the instruction and wrote an output "
           "for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\nThe instruction was to")
# APE's resampling template: a variation of an instruction, keeping its meaning.
VARY = "Generate a variation of the following instruction while keeping the semantic meaning.\n\nInput: {}\n\nOutput:"
PAIRS = 5          # labelled examples shown to the proposer per candidate
NEW_TOKENS = 32    # the most tokens a proposed instruction takes
_UNSAFE = re.compile(r"[^A-Za-z0-9 ,.;:!?()'-]+")  # (no quotes, braces, $ or backslashes: safe in an override)


def clean(text: str) -> str:
    """A generated completion as an instruction: its first line, characters safe to write in a
    command-line override, capitalised, ending with a full stop; '' when nothing is left."""
    line = _UNSAFE.sub(" ", text.strip().split("\n")[0]).strip(" ,;:-")
    line = re.sub(r"\s+", " ", line)
    if len({w.lower() for w in line.split()}) < 3:  # (too short, or one word repeated: instructs nothing)
        return ""
    return line[0].upper() + line[1:] + ("" if line.endswith((".", "?", "!")) else ".")


def generate(model, tokenizer, prompt: str) -> str:
    """The model's greedy completion of `prompt` (NEW_TOKENS at most), as text."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def propose(model, tokenizer, examples: list[tuple[str, str]], n: int, seed: int) -> list[str]:
    """Up to `n` distinct instructions: half proposed from different draws of PAIRS labelled
    `examples` ((input, output) of the train role; never a development or test example), the rest
    variations of those. Deterministic for a seed (greedy decoding, seeded draws)."""
    rnd, found = random.Random(seed), []
    proposals = max(1, (n + 1) // 2)
    for _ in range(proposals * 2):  # (twice the tries: a completion may leave nothing usable)
        shown = rnd.sample(examples, min(PAIRS, len(examples)))
        pairs = "\n\n".join(f"Input: {x}\nOutput: {y}" for x, y in shown)
        candidate = clean(generate(model, tokenizer, PROPOSE.format(pairs=pairs)))
        if candidate and candidate not in found:
            found.append(candidate)
        if len(found) == proposals:
            break
    for base in list(found):
        if len(found) >= n:
            break
        variation = clean(generate(model, tokenizer, VARY.format(base)))
        if variation and variation not in found:
            found.append(variation)
    return found[:n]
