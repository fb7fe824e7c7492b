"""Turn a base model into what a method trains (or leave it frozen for the baselines)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from sweep.config import TARGET_MODULE_PRESETS, ConfigError, close_matches
from sweep.models import linear_module_names


def resolve_target_modules(spec, model: torch.nn.Module) -> list[str]:
    """A preset name or a list of names -> the linear-layer names of this model to adapt."""
    available = linear_module_names(model)
    if isinstance(spec, str):
        names = TARGET_MODULE_PRESETS[spec]
        if names is None:  # all-linear
            return available
        requested, key = list(names), f"lora.target_modules={spec}"
    else:
        requested, key = [str(n) for n in spec], "lora.target_modules"
    unknown = [n for n in requested if n not in available]
    if unknown:
        hint = "".join(close_matches(n, available) for n in unknown[:1])
        raise ConfigError(
            f"{key}: this model has no linear layer named {', '.join(unknown)}{hint}; "
            f"its linear layers are: {', '.join(available)}"
        )
    return requested


def lora_config(lora: DictConfig, target_modules: list[str]):
    """peft's LoraConfig from our `lora` group (alpha -> lora_alpha, dropout -> lora_dropout)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=target_modules, bias=lora.bias,
    )


def apply_method(model: torch.nn.Module, method: DictConfig, lora: DictConfig) -> torch.nn.Module:
    """Return the model to train and score: peft-wrapped, fully trainable, or frozen."""
    if not method.trains:
        model.requires_grad_(False)
        return model
    if method.peft == "lora":
        from peft import get_peft_model

        return get_peft_model(model, lora_config(lora, resolve_target_modules(lora.target_modules, model)))
    if method.peft is None:
        model.requires_grad_(True)
        return model
    raise ConfigError(f"method.peft={method.peft!r} is not supported: use lora or null")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; `parameters()` already counts tied weights once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
