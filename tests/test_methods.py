"""Methods on the tiny model: target-module presets, LoRA parameter counts and init, freezing."""

import copy

import pytest
import torch

from sweep.config import ConfigError
from sweep.methods import apply_method, count_parameters, resolve_target_modules
from sweep.models import linear_module_names
from tests.conftest import compose

ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


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
    model = apply_method(fresh(tiny), cfg.method, cfg.lora)
    assert lora_targets(model) == expected
    layers = cfg.model.from_config.num_hidden_layers
    assert sum(hasattr(m, "lora_A") for m in model.modules()) == layers * len(expected)


def test_explicit_module_list(tiny):
    cfg = compose("model=tiny", "lora.target_modules=[k_proj,down_proj]")
    assert lora_targets(apply_method(fresh(tiny), cfg.method, cfg.lora)) == {"k_proj", "down_proj"}


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
        counts[r] = count_parameters(apply_method(fresh(tiny), cfg.method, cfg.lora))[0]
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
        adapted = apply_method(base, cfg.method, cfg.lora).eval()
        after = adapted(input_ids=x).logits
    assert torch.equal(before, after)
    assert all(torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in adapted.modules() if hasattr(m, "lora_B"))


def test_full_trains_everything_and_baselines_train_nothing(tiny):
    total = count_parameters(tiny[0])[1]
    full = apply_method(fresh(tiny), compose("method=full").method, None)
    assert count_parameters(full) == (total, total)
    for method in ("zero_shot", "few_shot"):
        frozen = apply_method(fresh(tiny), compose(f"method={method}").method, None)
        assert count_parameters(frozen) == (0, total)
