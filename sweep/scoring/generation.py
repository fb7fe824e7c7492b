"""Generation in batches of similar lengths under a token budget.

lm-eval's HFLM sorts generation requests longest first and cuts them into batches of
`batch_size`: the first batch pads every row to the longest prompt of the set (a 1,320-token seed
task pads 31 prompts of 20-400 tokens), and every new token of that batch attends over the padded
length. `LengthBatchedLM` cuts the same longest-first order by a token budget instead
(sweep/scoring/batching.py: a long prompt shares its batch with few rows) and hands each batch to
lm-eval's own `generate_until`, so decoding, stop sequences, truncation and caching stay
lm-eval's; replies come back in the requests' order. Requests with different generation settings
are never batched together (as lm-eval groups them).
"""

from __future__ import annotations

import json

from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from sweep.scoring.batching import length_batches


class LengthBatchedLM(HFLM):
    """lm-eval's HFLM whose generation batches are cut by a token budget, not only by count."""

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests or not isinstance(self.batch_size, int) or self.batch_size <= 1:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):  # one batch, one set of generation settings
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        replies: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running generate_until requests (length-batched)") as bar:
            for members in groups.values():
                lengths = [len(self.tok_encode(requests[i].args[0])) for i in members]
                for batch in length_batches(lengths, self.batch_size):
                    chosen = [members[j] for j in batch]
                    for i, reply in zip(chosen, super().generate_until([requests[i] for i in chosen],
                                                                       disable_tqdm=True), strict=True):
                        replies[i] = reply
                    bar.update(len(chosen))
        return replies
