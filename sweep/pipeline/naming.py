"""A run's name in MLflow: what it trained or how it prompted, at a glance (lora-r8-a16-qkvo,
few_shot-k4-balanced-cal-plain, dpo-b0.1-lora-r8-a16-qkvo)."""

from __future__ import annotations

from omegaconf import DictConfig

from sweep.scoring.baselines import Variant, template_suffix
from sweep.stages.table import STAGES
from sweep.training.checks import PROMPT_LEARNING


def run_name(cfg: DictConfig) -> str:
    if cfg.tracking.run_name:
        return cfg.tracking.run_name
    label = STAGES[cfg.stage.name].label  # a later stage's run name starts with its label and main setting
    name = f"{label.format(**cfg.stage)}-{method_run_name(cfg)}" if label else method_run_name(cfg)
    return name + pool_suffix(cfg)


def pool_suffix(cfg: DictConfig) -> str:
    """With eval.fewshot_pool=trained (a crossover: each size and seed its own labelled pool), the pool:
    -n64-s1; else nothing."""
    if cfg.eval.fewshot_pool != "trained":
        return ""
    return f"-n{cfg.data.max_train_samples or 'all'}-s{cfg.seed}"


def method_run_name(cfg: DictConfig) -> str:
    m = cfg.method
    if m.peft == "lora":  # e.g. lora-r8-a16-qkvo, qlora-r4-a16-q+k-k6-dora-nf4 (k6: rank 6 on k_proj)
        lora = cfg.lora
        short = lambda name: name.removesuffix("_proj")  # noqa: E731
        tm = lora.target_modules if isinstance(lora.target_modules, str) else "+".join(map(short, lora.target_modules))
        parts = [m.name, f"r{lora.r}", f"a{lora.alpha:g}", tm,
                 *(f"{short(k)}{v}" for k, v in (lora.rank_pattern or {}).items())]
        parts += [lora.init] if lora.init != "default" else []
        parts += [flag for flag in ("dora", "rslora") if lora[f"use_{flag}"]]
        if m.quantization:
            q = m.quantization
            parts.append("int8" if q.get("load_in_8bit") else q.get("bnb_4bit_quant_type", "nf4"))
        return "-".join(parts) + template_suffix(cfg.eval.template)
    if m.peft in PROMPT_LEARNING:
        init = f"-{cfg.prompt.init}" if m.peft == "prompt_tuning" else ""
        return f"{m.name}-n{cfg.prompt.num_virtual_tokens}{init}" + template_suffix(cfg.eval.template)
    if m.name in ("zero_shot", "few_shot"):  # e.g. few_shot-k4-balanced-cal-plain
        e = cfg.eval
        return Variant(e.template, m.num_fewshot, e.fewshot_sampler, e.calibrate, e.instruction).label() + (
            "-per_example" if m.num_fewshot and e.fewshot_per_example else "")
    return m.name
