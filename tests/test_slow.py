"""The real SmolLM2-135M: conversion from the bundled GGUF is faithful, and a short job runs."""

import pytest
import torch

from tests.conftest import compose, run_sweep, runs_of

pytestmark = pytest.mark.slow


def test_cached_safetensors_model_matches_the_gguf():
    from transformers import AutoModelForCausalLM

    from sweep.training.models import bundled_gguf, load_model_and_tokenizer

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
    """The real 135M model, trained three steps and scored: slow because it is the model users run
    (what the tiny model cannot show: the bundled weights loaded and a whole job on 135M parameters)."""
    p = run_sweep("train.max_steps=3", "train.batch_size=4", "data.max_train_samples=24", "eval.limit=16",
                  "data.dev_size=16", "lora.r=2", *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "FINISHED" and run["tags.model"] == "smollm2_135m"
    assert run["metrics.total_params"] > 134_000_000 and run["metrics.sst2/n_samples"] == 16


def test_smollm2_rlhf_pipeline_end_to_end(tmp_path, tracking):
    """SFT, reward model, then PPO (generation with the KV cache, the reward model, GAE) on SmolLM2."""
    p = run_sweep("-m", "experiment=rlhf", "hydra/launcher=basic", "stage=sft,reward,ppo",
                  "train.max_steps=1", "train.batch_size=2", "data.max_train_samples=4", "data.max_prompt_tokens=96",
                  "eval.limit=2", "eval.pairs=2", "eval.generation.max_gen_toks=8", "train.max_seq_length=160",
                  "data.dev_size=2",
                  f"hydra.sweep.dir={tmp_path}/multirun", *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {r["tags.stage"]: r for r in runs_of(tracking, "rlhf").to_dict("records")}
    assert set(runs) == {"sft", "reward", "ppo"} and all(r["status"] == "FINISHED" for r in runs.values())
    ppo = runs["ppo"]
    assert ppo["tags.parent_run_id"] == runs["sft"]["run_id"] and ppo["tags.judge_run_id"] == runs["reward"]["run_id"]
    assert ppo["metrics.total_params"] > 134_000_000 and 0 <= ppo["metrics.hh_rlhf/win_rate"] <= 1
    assert ppo["metrics.rollout_tokens_per_second"] > 0
