"""The real SmolLM2-135M: conversion from the bundled GGUF is faithful, and a short job runs."""

import pytest
import torch

from tests.conftest import compose, run_sweep, runs_of

pytestmark = pytest.mark.slow


def test_cached_safetensors_model_matches_the_gguf():
    from transformers import AutoModelForCausalLM

    from sweep.models import bundled_gguf, load_model_and_tokenizer

    cfg = compose()
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0)
    gguf = bundled_gguf(cfg.model.gguf)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tokenizer("The movie was wonderful.\nQuestion: Is this sentence positive or negative?\nAnswer:",
                    return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_smollm2_job_end_to_end(tracking):
    p = run_sweep("train.max_steps=3", "train.batch_size=4", "data.max_train_samples=24", "eval.limit=16",
                  "lora.r=2", *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "FINISHED" and run["tags.model"] == "smollm2_135m"
    assert run["metrics.total_params"] > 134_000_000 and run["metrics.sst2/n_samples"] == 16
