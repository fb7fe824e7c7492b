"""Batches of similar lengths under a token budget, for the passes that pad a batch to its longest
row (the KL's forward passes, the reward model's scores).

Sorted longest first, a batch holds at most `batch_size` rows and, padded, at most
`batch_size * TOKENS_PER_ROW` tokens: one long prompt (a 1,320-token seed task among prompts of
20-400) pads the few rows beside it, not a whole batch of short ones. Attention's cost grows with
the square of the padded length, so that one row would otherwise set the cost of 32.
"""

from __future__ import annotations

TOKENS_PER_ROW = 256  # the budget per row of `batch_size`: rows of up to this length fill a whole batch


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most `batch_size` rows and at
    most `batch_size * TOKENS_PER_ROW` padded tokens (a row longer than that alone)."""
    budget = batch_size * TOKENS_PER_ROW
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        current = batches[-1] if batches else []
        if not current or len(current) == batch_size or (len(current) + 1) * lengths[current[0]] > budget:
            batches.append([i])
        else:
            current.append(i)
    return batches
