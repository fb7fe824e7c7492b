"""Training on the tiny model: deterministic given the seed, answer-only logits give the same loss."""

import copy

import pytest
import torch

from sweep.pipeline.build import build
from sweep.training.sft import EAGER_MAX_ROW, AnswerOnlyTrainer, longest_row, train
from tests.conftest import TINY, compose


def _train(tmp_path, *overrides):
    cfg = compose(*TINY, "train.max_steps=3", *overrides)
    built = build(cfg)
    result = train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, str(tmp_path))
    lora = {k: v.clone() for k, v in built.model.state_dict().items() if "lora_" in k}
    return result, lora


def test_training_is_deterministic_on_cpu(tmp_path):
    a, lora_a = _train(tmp_path)
    b, lora_b = _train(tmp_path)
    assert a.final_loss == b.final_loss and a.tokens == b.tokens > 0
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    assert any(torch.count_nonzero(v) for k, v in lora_a.items() if "lora_B" in k)  # it did learn


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path):
    """Recomputing activations in the backward pass (less memory) changes nothing learned."""
    plain, lora_plain = _train(tmp_path)
    checkpointed, lora_checkpointed = _train(tmp_path, "train.gradient_checkpointing=true")
    assert checkpointed.gradient_checkpointing and not plain.gradient_checkpointing
    assert checkpointed.final_loss == pytest.approx(plain.final_loss, abs=1e-5)
    assert all(torch.allclose(lora_plain[k], lora_checkpointed[k], atol=1e-6) for k in lora_plain)


@pytest.mark.parametrize("method", ["lora", "qlora", "full", "prompt_tuning", "prefix_tuning"])
def test_answer_only_loss_equals_the_full_loss(method):
    """Same loss from the answer positions alone, for every method (prompt tuning shifts positions)."""
    cfg = compose(*TINY, f"method={method}", "lora.dropout=0")
    built = build(cfg)
    batch = built.train_dataset.select(range(4))
    from transformers import DataCollatorForSeq2Seq

    inputs = DataCollatorForSeq2Seq(built.tokenizer, padding=True, label_pad_token_id=-100)(list(batch))
    full = built.model(**copy.deepcopy(inputs)).loss
    trainer = AnswerOnlyTrainer.__new__(AnswerOnlyTrainer)  # compute_loss needs no Trainer state
    answer_only = trainer.compute_loss(built.model, dict(inputs))
    assert torch.allclose(full, answer_only, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_padding_free_batch_gives_each_example_the_loss_and_gradients_it_has_padded(method):
    """One flattened row (position ids restarting per example), without a key/value cache as the
    Trainer trains (TrainingArguments.use_cache=False), keeps attention within each example: the same
    loss and gradients as the padded batch. With the model's cache on (transformers then skips its
    search for packed examples), or without the position ids, each example attends to the ones
    before it: another loss."""
    from sweep.training.sft import batch_collator

    cfg = compose(*TINY, f"method={method}", "lora.dropout=0")
    built = build(cfg)
    batch = list(built.train_dataset.select(range(4)))
    trainer = AnswerOnlyTrainer.__new__(AnswerOnlyTrainer)  # compute_loss needs no Trainer state

    def loss_and_grads(inputs):
        built.model.zero_grad()
        loss = trainer.compute_loss(built.model, inputs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in built.model.parameters() if p.requires_grad]

    padded = batch_collator(built.tokenizer, padding_free=False)(batch)
    flat = batch_collator(built.tokenizer, padding_free=True)(batch)
    assert flat["input_ids"].shape == (1, int(padded["attention_mask"].sum())) and "attention_mask" not in flat
    built.model.config.use_cache = False  # (as the Trainer sets it)
    loss, grads = loss_and_grads(dict(padded))
    flat_loss, flat_grads = loss_and_grads(dict(flat))
    assert torch.allclose(loss, flat_loss, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, flat_grads, strict=True))
    crossing = loss_and_grads({k: v for k, v in flat.items() if k != "position_ids"})[0]
    built.model.config.use_cache = True
    for leaking in (crossing, loss_and_grads(dict(flat))[0]):  # (the second: the cache on)
        assert not torch.allclose(loss, leaking, atol=1e-4)


def test_padding_free_training_learns_the_same_adapter_from_the_same_tokens(tmp_path):
    """A whole run: same batches, same tokens counted (all of them, none padding), same adapter
    (fp32: bf16 rounds the two shapes' sums differently; no dropout: its masks follow the shapes)."""
    assert_learns_the_same_adapter_from_the_same_tokens(tmp_path, "train.padding_free=true")


def assert_learns_the_same_adapter_from_the_same_tokens(tmp_path, variant: str) -> None:
    """Two tiny runs, padded batches and `variant`: the same tokens counted, loss and adapter (fp32,
    no dropout: see above)."""
    same = ("train.bf16=false", "lora.dropout=0")
    plain, lora_plain = _train(tmp_path, *same)
    other, lora_other = _train(tmp_path, *same, variant)
    assert other.tokens == plain.tokens > 0
    assert other.final_loss == pytest.approx(plain.final_loss, abs=1e-5)
    assert all(torch.allclose(lora_plain[k], lora_other[k], atol=1e-6) for k in lora_plain)


def test_auto_attention_trains_eagerly_on_the_cpu_and_gives_the_model_its_own_back(tmp_path):
    """train.attn_implementation=auto: eager attention for the training step on the CPU where rows
    are short (the fused kernel's backward pass is slow there), the model's own (sdpa) back for
    scoring after it; the same loss and adapter as a step on sdpa, to float rounding (fp32, no
    dropout: see above)."""
    same = ("train.bf16=false", "lora.dropout=0")
    cfg = compose(*TINY, "train.max_steps=3", *same)
    built = build(cfg)
    assert cfg.train.attn_implementation == "auto" and built.model.config._attn_implementation == "sdpa"
    auto = train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, str(tmp_path))
    assert auto.attention == "eager" and built.model.config._attn_implementation == "sdpa"
    lora_auto = {k: v for k, v in built.model.state_dict().items() if "lora_" in k}
    fused, lora_fused = _train(tmp_path, *same, "train.attn_implementation=sdpa")
    assert fused.attention == "sdpa" and fused.tokens == auto.tokens
    assert fused.final_loss == pytest.approx(auto.final_loss, abs=1e-5)
    assert all(torch.allclose(lora_auto[k], lora_fused[k], atol=1e-5) for k in lora_auto)
    # Long rows (here a padding-free batch flattened into one) train with the model's own: eager
    # attention's score matrices grow with the square of the row (a packed 512-token batch took 24 GB).
    flat = compose(*TINY, "train.padding_free=true", "train.max_steps=1")
    assert longest_row(build(flat).train_dataset, flat.train) > EAGER_MAX_ROW
    assert _train(tmp_path, "train.padding_free=true", "train.max_steps=1")[0].attention == "sdpa"


def test_bucketed_batches_take_few_shapes_and_learn_the_same_adapter_from_the_same_tokens(tmp_path):
    """train.pad_to_multiple_of rounds each batch up (the bound on a compiled step's recompilations:
    max_seq_length / the multiple shapes); the extra padding is masked and not counted: the same
    tokens and adapter as batches padded to their longest (fp32, no dropout: see above)."""
    from sweep.training.sft import batch_collator, training_arguments

    cfg = compose(*TINY)
    built = build(cfg)
    examples = list(built.train_dataset)
    collate = batch_collator(built.tokenizer, padding_free=False, pad_to_multiple_of=16)
    lengths = {collate(examples[i:i + 4])["input_ids"].shape[1] for i in range(0, len(examples), 4)}
    longest = max(len(e["input_ids"]) for e in examples)
    assert all(n % 16 == 0 for n in lengths) and len(lengths) <= -(-longest // 16)
    assert len({len(e["input_ids"]) for e in examples}) > len(lengths)  # (fewer shapes than lengths)
    assert_learns_the_same_adapter_from_the_same_tokens(tmp_path, "train.pad_to_multiple_of=16")
    for flag in (True, False):  # train.torch_compile reaches the Trainer (compiling takes minutes: bench/ times it)
        train_cfg = compose(*TINY, f"train.torch_compile={str(flag).lower()}").train
        assert training_arguments(train_cfg, 0, str(tmp_path)).torch_compile is flag


def test_epochs_count_steps_by_the_examples_and_max_steps_caps_them():
    from omegaconf import OmegaConf

    from sweep.training.sft import optimizer_steps

    train = OmegaConf.create({"max_steps": 250, "batch_size": 16, "grad_accum": 2, "num_train_epochs": 4})
    assert optimizer_steps(train, 64) == 8          # 4 passes over 64 examples, 32 a step
    assert optimizer_steps(train, 65) == 9          # (a last, partial step)
    assert optimizer_steps(train, 4096) == 250      # capped by max_steps
    train.num_train_epochs = None
    assert optimizer_steps(train, 64) == 250        # (no epochs: max_steps alone, as before)
