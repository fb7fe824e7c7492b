"""Turn a base model into what a method trains (or leave it frozen for the baselines)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError, close_matches
from sweep.training.checks import LORA_INITS, TARGET_MODULE_PRESETS
from sweep.training.models import linear_module_names, model_source


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


def check_target_modules(model_cfg: DictConfig, lora: DictConfig, cache_dir, seed: int) -> None:
    """lora.target_modules against the base model's layers, read from its config on the meta device
    (no weights): an unknown name is refused before a store exists or the model loads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(model_cfg, cache_dir, seed)
    config = AutoConfig.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    resolve_target_modules(lora.target_modules, skeleton)


def lora_config(lora: DictConfig, target_modules: list[str], task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig from our `lora` group (alpha -> lora_alpha, dropout -> lora_dropout,
    init -> init_lora_weights); task_type SEQ_CLS (a reward model) also trains the new head."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=target_modules, bias=lora.bias, init_lora_weights=LORA_INITS[lora.init],
        use_dora=lora.use_dora, use_rslora=lora.use_rslora,
        rank_pattern=OmegaConf.to_container(lora.rank_pattern) if lora.rank_pattern else {},
    )


def prompt_config(peft: str, prompt: DictConfig, tokenizer_path: str | None):
    """peft's PromptTuningConfig / PrefixTuningConfig from our `prompt` group."""
    from peft import PrefixTuningConfig, PromptTuningConfig

    if peft == "prefix_tuning":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=prompt.num_virtual_tokens,
                                  prefix_projection=prompt.prefix_projection)
    from_text = prompt.init == "text"
    return PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=prompt.num_virtual_tokens,
        prompt_tuning_init="TEXT" if from_text else "RANDOM",
        prompt_tuning_init_text=prompt.init_text if from_text else None,
        tokenizer_name_or_path=tokenizer_path if from_text else None,
    )


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_method(model: torch.nn.Module, method: DictConfig, lora: DictConfig, prompt: DictConfig,
                 tokenizer_path: str | None = None, task_type: str = "CAUSAL_LM") -> torch.nn.Module:
    """Return the model to train and score: peft-wrapped, fully trainable, or frozen.

    `tokenizer_path` (a folder with the tokenizer) lets prompt tuning start from a text's embeddings;
    `task_type`: peft's, SEQ_CLS for a reward model.
    """
    if not method.trains:
        model.requires_grad_(False)
        return model
    if method.peft is None:
        model.requires_grad_(True)
        return model

    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        # Norms to fp32 and input gradients on, as QLoRA needs; checkpointing stays a Trainer choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if method.peft == "lora":
        targets = resolve_target_modules(lora.target_modules, model)
        stray = [k for k in lora.rank_pattern or {} if k not in targets]
        if stray:
            raise ConfigError(f"lora.rank_pattern: {', '.join(stray)} is not among the target modules "
                              f"({', '.join(targets)}); add it to lora.target_modules or drop it")
        config = lora_config(lora, targets, task_type)
    else:
        config = prompt_config(method.peft, prompt, tokenizer_path)
    return get_peft_model(model, config)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; `parameters()` already counts tied weights once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(_numel(p) for p in params)


def _numel(p: torch.Tensor) -> int:
    """Weights, not storage: bitsandbytes packs two 4-bit weights per byte of its storage dtype."""
    if type(p).__name__ == "Params4bit":
        return p.numel() * 2 * p.quant_storage.itemsize
    return p.numel()
