"""The data group's own checks."""

from __future__ import annotations

from omegaconf import DictConfig

from sweep.config import is_int, is_number, require


def validate_data(data: DictConfig, trains: bool) -> None:
    """The data group; the training keys only for a method that trains."""
    require(is_int(data.dev_size) and data.dev_size >= 0, "data.dev_size", data.dev_size,
            "must be an integer >= 0 (development examples carved from the train split; 0: none)")
    mpt = data.get("max_prompt_tokens")
    require(mpt is None or (is_int(mpt) and mpt > 0), "data.max_prompt_tokens", mpt,
            "must be a positive integer or null (no limit)")
    if trains:
        mts = data.max_train_samples
        require(mts is None or (is_int(mts) and mts > 0), "data.max_train_samples", mts,
                "must be a positive integer or null (all)")
        validate_mix(data)


def validate_mix(data: DictConfig) -> None:
    """data.mix / data.generated (datasets that take generated instructions, e.g. self_instruct)."""
    mix = data.get("mix", 0.0)
    require(is_number(mix) and 0 <= mix <= 1, "data.mix", mix,
            "must be a number in [0, 1] (the share of generated examples in training)")
    require(not mix or data.get("generated") is not None, "data.mix", mix,
            "needs data.generated=<run id of `python generate_instructions.py`, or its tasks.jsonl>")
