"""Methods on the tiny model: target-module presets, LoRA parameter counts and init, freezing."""

import copy

import pytest
import torch

from sweep.config import ConfigError
from sweep.training.methods import (
    apply_method,
    count_parameters,
    resolve_target_modules,
)
from sweep.training.models import linear_module_names
from tests.conftest import ROOT, compose

ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def adapt(model, cfg, *args):
    """apply_method with the method, lora and prompt groups of a composed config."""
    return apply_method(model, cfg.method, cfg.lora, cfg.prompt, *args)


def fresh(tiny):
    return copy.deepcopy(tiny[0])


def lora_targets(peft_model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, mod in peft_model.named_modules() if hasattr(mod, "lora_A")}


def test_linear_module_names_exclude_the_output_head(tiny):
    assert linear_module_names(tiny[0]) == ALL_LINEAR


@pytest.mark.parametrize("preset,expected", [
    ("qv", {"q_proj", "v_proj"}),
    ("qkvo", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    ("mlp", {"gate_proj", "up_proj", "down_proj"}),
    ("all-linear", set(ALL_LINEAR)),
])
def test_presets_adapt_exactly_their_modules(tiny, preset, expected):
    cfg = compose("model=tiny", f"lora.target_modules={preset}")
    model = adapt(fresh(tiny), cfg)
    assert lora_targets(model) == expected
    layers = cfg.model.from_config.num_hidden_layers
    assert sum(hasattr(m, "lora_A") for m in model.modules()) == layers * len(expected)


def test_explicit_module_list(tiny):
    cfg = compose("model=tiny", "lora.target_modules=[k_proj,down_proj]")
    assert lora_targets(adapt(fresh(tiny), cfg)) == {"k_proj", "down_proj"}


def test_unknown_module_lists_the_models_real_linear_layers(tiny):
    with pytest.raises(ConfigError) as e:
        resolve_target_modules(["q_proj", "c_attn"], tiny[0])
    msg = str(e.value)
    assert "no linear layer named c_attn" in msg
    assert "its linear layers are: " + ", ".join(ALL_LINEAR) in msg


def test_trainable_parameters_grow_linearly_with_r(tiny):
    counts = {}
    for r in (1, 2, 4, 8):
        cfg = compose("model=tiny", f"lora.r={r}")
        counts[r] = count_parameters(adapt(fresh(tiny), cfg))[0]
    # qkvo on 2 layers, hidden 64, kv dim 32 (2 kv heads of 16): r * sum(in + out) per layer.
    per_r = 2 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))
    assert counts == {r: r * per_r for r in counts}


def test_lora_starts_as_the_base_model(tiny):
    """B is zero at init, so the adapted model computes exactly what the base model does."""
    base = fresh(tiny)
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = base(input_ids=x).logits
        cfg = compose("model=tiny", "lora.target_modules=all-linear", "lora.dropout=0")
        adapted = adapt(base, cfg).eval()
        after = adapted(input_ids=x).logits
    assert torch.equal(before, after)
    assert all(torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in adapted.modules() if hasattr(m, "lora_B"))


def test_full_trains_everything_and_baselines_train_nothing(tiny):
    total = count_parameters(tiny[0])[1]
    full = adapt(fresh(tiny), compose("method=full"))
    assert count_parameters(full) == (total, total)
    for method in ("zero_shot", "few_shot"):
        frozen = adapt(fresh(tiny), compose(f"method={method}"))
        assert count_parameters(frozen) == (0, total)


# --- QLoRA ---------------------------------------------------------------------------------------

def load_quantized(*overrides):
    from sweep.training.models import load_model_and_tokenizer

    cfg = compose("model=tiny", "method=qlora", *overrides)
    return cfg, load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0, quantization=cfg.method.quantization)[0]


@pytest.mark.parametrize("quant_type,double", [("nf4", True), ("fp4", False)])
def test_qlora_holds_4bit_weights_with_lora_on_top(tiny, quant_type, double):
    import bitsandbytes as bnb

    from sweep.training.models import memory_footprint_mb

    cfg, model = load_quantized(f"method.quantization.bnb_4bit_quant_type={quant_type}",
                                f"method.quantization.bnb_4bit_use_double_quant={double}")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 2 * 7  # every linear layer of both blocks; the tied head stays full precision
    state = layers[0].weight.quant_state
    assert state.quant_type == quant_type and state.nested == double and layers[0].weight.dtype == torch.uint8
    # Packed 4-bit weights: the linear layers hold ~1/8 of their fp32 bytes (plus block constants).
    linear_fp32 = sum(m.weight.numel() * 4 for m in tiny[0].modules()
                      if isinstance(m, torch.nn.Linear) and m is not tiny[0].get_output_embeddings())
    saved_mb = memory_footprint_mb(tiny[0]) - memory_footprint_mb(model)
    assert saved_mb * 2**20 == pytest.approx(linear_fp32 * 7 / 8, rel=0.05)
    # The weights it holds are the tiny model's, quantized (same seed).
    q = tiny[0].model.layers[0].self_attn.q_proj.weight
    deq = bnb.functional.dequantize_4bit(layers[0].weight.data, state) if layers[0] is model.model.layers[0].self_attn.q_proj \
        else None
    assert deq is not None and (deq - q).norm() / q.norm() < 0.15

    adapted = adapt(model, cfg)
    assert lora_targets(adapted) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for m in adapted.modules() if hasattr(m, "lora_A"))
    trainable, total = count_parameters(adapted)
    assert total == count_parameters(adapt(fresh(tiny), compose("model=tiny")))[1]  # weights, not bytes
    assert trainable == count_parameters(adapt(fresh(tiny), compose("model=tiny")))[0]


def test_paged_optimizers_run_unpaged_on_the_cpu():
    from sweep.training.sft import effective_optim

    if torch.cuda.is_available():
        pytest.skip("a GPU pages them")
    assert effective_optim("paged_adamw_32bit") == "adamw_torch"
    assert effective_optim("paged_adamw_8bit") == "adamw_8bit"
    assert effective_optim("adamw_torch") == "adamw_torch"


# --- LoRA variants -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    [], ["lora.init=gaussian"], ["lora.use_dora=true"], ["lora.use_rslora=true"], ["lora.bias=lora_only"],
])
def test_lora_variants_start_as_the_base_model(tiny, variant):
    """B = 0 at init (default and gaussian A; DoRA's magnitude starts at the weight norms), so the
    adapted model computes what the base model does."""
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = tiny[0](input_ids=x).logits
        cfg = compose("model=tiny", "lora.target_modules=all-linear", "lora.dropout=0", *variant)
        adapted = adapt(fresh(tiny), cfg).eval()
        after = adapted(input_ids=x).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert all(torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in adapted.modules() if hasattr(m, "lora_B"))


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_move_the_principal_part_into_the_adapter(tiny, init):
    """They start from an SVD/QR of W: B != 0, the base keeps the residual, the sum is still W."""
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        before = tiny[0](input_ids=x).logits
        adapted = adapt(fresh(tiny), compose("model=tiny", f"lora.init={init}", "lora.dropout=0")).eval()
        after = adapted(input_ids=x).logits
    assert torch.allclose(before, after, atol=1e-3)
    q = adapted.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.count_nonzero(q.lora_B["default"].weight) > 0
    assert not torch.allclose(q.base_layer.weight, tiny[0].model.layers[0].self_attn.q_proj.weight)


def test_rslora_and_rank_pattern_set_the_scaling_and_ranks(tiny):
    cfg = compose("model=tiny", "lora.r=4", "lora.alpha=16", "lora.use_rslora=true", "lora.rank_pattern={k_proj: 9}")
    attn = adapt(fresh(tiny), cfg).base_model.model.model.layers[0].self_attn
    assert attn.q_proj.r["default"] == 4 and attn.k_proj.r["default"] == 9
    assert attn.q_proj.scaling["default"] == pytest.approx(16 / 4 ** 0.5)  # alpha / sqrt(r)


def test_rank_pattern_outside_the_targets_is_rejected(tiny):
    with pytest.raises(ConfigError, match=r"lora.rank_pattern: up_proj is not among the target modules"):
        adapt(fresh(tiny), compose("model=tiny", "lora.rank_pattern={up_proj: 2}"))


LORA_BUDGET = [p.stem for p in sorted((ROOT / "conf" / "lora").glob("budget_*.yaml"))]


@pytest.mark.parametrize("preset", LORA_BUDGET)
def test_lora_budget_presets_train_the_same_number_of_parameters_on_smollm2(preset):
    """Table 5's design: every weight-type set gets the same budget, r=8 on q alone (SmolLM2-135M's
    real shapes, on the meta device: no weights needed)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(smollm2)
    adapted = adapt(model, compose(f"lora={preset}"))
    assert count_parameters(adapted)[0] == 30 * 8 * (576 + 576) == 276_480


# --- Prompt learning -----------------------------------------------------------------------------

def test_prompt_tuning_starts_from_the_init_text_and_changes_the_output(tiny):
    model, tokenizer = tiny
    cfg = compose("model=tiny", "method=prompt_tuning", "prompt.num_virtual_tokens=6", "prompt.init_text=Is it positive?")
    adapted = adapt(fresh(tiny), cfg, tokenizer.name_or_path).eval()
    assert count_parameters(adapted)[0] == 6 * model.config.hidden_size
    ids = tokenizer("Is it positive?", add_special_tokens=False).input_ids
    expected = model.get_input_embeddings().weight[(ids * 6)[:6]]
    assert torch.equal(adapted.prompt_encoder["default"].embedding.weight, expected)
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        base, tuned = model(input_ids=x).logits, adapted(input_ids=x).logits
    assert tuned.shape[1] == 6 + 12  # the virtual tokens come first
    assert not torch.allclose(base[:, -1], tuned[:, -1], atol=1e-3)


def test_prefix_tuning_trains_only_the_prefix(tiny):
    model = tiny[0]
    cfg = compose("model=tiny", "method=prefix_tuning", "prompt.num_virtual_tokens=5")
    adapted = adapt(fresh(tiny), cfg)
    c = model.config
    kv_dim = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    assert count_parameters(adapted)[0] == 5 * c.num_hidden_layers * 2 * kv_dim
