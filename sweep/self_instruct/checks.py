"""generate_instructions.py's own keys (conf/generate_instructions.yaml)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweep.config import is_int, is_number, require


def validate_generation(g: DictConfig) -> None:
    """The generation group: the loop's sizes, sampling settings and seed tasks."""
    for key in ("rounds", "prompts_per_round", "max_new_tokens", "instance_max_new_tokens", "batch_size",
                "instance_examples"):
        require(is_int(g[key]) and g[key] >= 1, f"generation.{key}", g[key], "must be an integer >= 1")
    require(is_int(g.in_context) and 2 <= g.in_context <= 32, "generation.in_context", g.in_context,
            "must be an integer in 2-32 (the paper: 8)")
    require(is_int(g.from_generated) and 0 <= g.from_generated < g.in_context, "generation.from_generated",
            g.from_generated, f"must be an integer in 0-{g.in_context - 1} (below generation.in_context)")
    require(is_number(g.temperature) and 0 <= g.temperature <= 5, "generation.temperature", g.temperature,
            "must be a number in 0-5 (0: greedy)")
    require(is_number(g.top_p) and 0 < g.top_p <= 1, "generation.top_p", g.top_p, "must be a number in (0, 1]")
    require(isinstance(g.calibrate_classification, bool), "generation.calibrate_classification",
            g.calibrate_classification, "must be true or false")
    require(Path(g.seed_file).is_file(), "generation.seed_file", g.seed_file,
            "no such file; point it at a JSONL of seed tasks (instruction, input, output, is_classification)")
