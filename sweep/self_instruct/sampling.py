"""The model side of Self-Instruct: a local causal LM sampled in batches (transformers' `generate`,
seeded), and the classification question asked of each new instruction."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sweep.self_instruct import filters as si

log = logging.getLogger(__name__)


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
