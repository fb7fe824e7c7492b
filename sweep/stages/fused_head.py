"""TRL's fused LM head, made to score only the positions that carry a label on the CPU too.

TRL's DPO, GRPO and RLOO trainers compute per-token log-probabilities through a fused LM head
(`trl.trainer.utils.add_fused_lm_head`). On Triton devices it projects only the positions whose label
is not -100; elsewhere it projects every position, so that a compiler (Neuron's) sees one tile shape
per batch. An eager CPU run compiles nothing, and a policy's row is mostly prompt, whose labels are
-100: projecting every position through a 49,152-word vocabulary made a step with 16 reply tokens
after 128 prompt tokens 3.3x slower at SmolLM2's width and 11x at the tests' tiny model's, for the same
loss (docs/performance.md). TRL has no option for it, so its one decision is widened here and TRL's
own kernel does the rest; if a TRL release drops the hook, nothing changes.
"""

from __future__ import annotations


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head compact (labelled positions only) on the CPU, as it is on Triton devices.
    Idempotent; a no-op where TRL no longer has the decision this widens."""
    from trl.trainer import utils

    decide = getattr(utils, "_use_triton", None)
    if decide is None or getattr(decide, "widened_for_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.widened_for_cpu = True
    utils._use_triton = compact
