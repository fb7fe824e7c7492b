"""Config resolvers and the checks that run before any compute.

Every error names the key, the bad value and what would be accepted, so a typo in a sweep
costs a second, not a model load.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import os
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: a team's server, when set

# Target-module presets for Llama-style attention/MLP names (SmolLM2, Llama, Mistral, Qwen...).
TARGET_MODULE_PRESETS: dict[str, list[str] | None] = {
    "qv": ["q_proj", "v_proj"],
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all-linear": None,  # every linear layer but the output head, whatever the names
}
METHODS = ("lora", "qlora", "full", "prompt_tuning", "prefix_tuning", "zero_shot", "few_shot", "strongest_baseline")
DEFAULT_TEMPLATE = "default"  # eval.template whose task is tasks/<task>.yaml itself (others: <task>_<template>)
FEWSHOT_SAMPLERS = ("random", "balanced")
ORACLES = ("none", "finished", "all")  # method.search.oracle: which variants are also scored on test (peeking)
PROMPT_LEARNING = ("prompt_tuning", "prefix_tuning")  # peft types that learn virtual tokens
PEFT_TYPES = ("lora", *PROMPT_LEARNING)
# lora.init -> peft's init_lora_weights
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
SAMPLING = ("random", "sequential", "group_by_length")
DTYPES = ("float32", "bfloat16", "float16")
STAGES = ("sft", "reward", "dpo", "grpo", "rloo", "ppo")  # the `stage` group: the RLHF pipeline's steps
# DPOConfig.loss_type values (TRL 1.16's list)
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
RUN_ID_FORMAT = r"[0-9a-f]{32}"  # an MLflow run id


class ConfigError(ValueError):
    """Bad user input, found before any compute; the message says which key and how to fix it."""


def default_tracking_uri(root: str | Path = PROJECT_ROOT) -> str:
    """$MLFLOW_TRACKING_URI when set (as every MLflow tool reads it), else the embedded SQLite
    store in the project folder."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{Path(root)}/mlflow.db"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("default_tracking_uri", default_tracking_uri, replace=True)
    # Derived values in sweeps, e.g. `lora.alpha='${mul:2,${lora.r}}'`.
    OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `python sweep.py OVERRIDES` runs (Hydra's compose API), for tools other than sweep.py."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def close_matches(value: str, allowed) -> str:
    """' (did you mean: x?)' when something in `allowed` is close to `value`, else ''."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(near)}?)" if near else ""


def _require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise ConfigError on the first problem."""
    try:  # (Hydra's own node, when present, holds values that are only set while a job runs)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except Exception as e:  # a bad interpolation, e.g. ${mul:...} on a string
        raise ConfigError(f"the config does not resolve: {e}") from None

    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    validate_model(cfg.model)
    m = cfg.method
    _require(m.name in METHODS, "method", m.name, f"choose one of {', '.join(METHODS)}")
    _require(m.peft is None or m.peft in PEFT_TYPES, "method.peft", m.peft,
             f"choose one of {', '.join(PEFT_TYPES)} or null")
    if m.quantization is not None:
        validate_quantization(m.quantization, m.peft)
    if m.trains:
        validate_optim(cfg.train.optim)
        t = cfg.train
        _require(_is_int(t.max_steps) and t.max_steps > 0, "train.max_steps", t.max_steps, "must be a positive integer")
        for key in ("batch_size", "grad_accum"):
            _require(_is_int(t[key]) and t[key] > 0, f"train.{key}", t[key], "must be a positive integer")
        _require(_is_number(t.lr) and t.lr > 0, "train.lr", t.lr, "must be a positive number, e.g. train.lr=1e-4")
        _require(_is_int(t.max_seq_length) and t.max_seq_length > 1, "train.max_seq_length", t.max_seq_length,
                 "must be an integer > 1")
        _require(t.sampling in SAMPLING, "train.sampling", t.sampling, f"choose one of {', '.join(SAMPLING)}")
        _require(_is_int(t.logging_steps) and t.logging_steps > 0, "train.logging_steps", t.logging_steps,
                 "must be a positive integer")
        _require(_is_number(t.warmup_ratio) and 0 <= t.warmup_ratio <= 1, "train.warmup_ratio", t.warmup_ratio,
                 "must be a number in [0, 1] (the share of steps spent warming up)")
        _require(_is_number(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay,
                 "must be a number >= 0")
        validate_scheduler(t.lr_scheduler)
        _require(t.bf16 in (True, False, "auto"), "train.bf16", t.bf16, "choose true, false or auto")
        for key in ("answer_only_logits", "gradient_checkpointing"):
            _require(isinstance(t[key], bool), f"train.{key}", t[key], "must be true or false")
        mts = cfg.data.max_train_samples
        _require(mts is None or (_is_int(mts) and mts > 0), "data.max_train_samples", mts,
                 "must be a positive integer or null (all)")
        _require(not cfg.eval.every_steps or cfg.data.dev_size, "eval.every_steps", cfg.eval.every_steps,
                 "scores the development slice during training, and data.dev_size=0 carves none: "
                 "set data.dev_size (e.g. 200) or eval.every_steps=null")
        validate_mix(cfg.data)
    if m.peft == "lora":
        validate_lora(cfg.lora)
        _require(m.quantization is None or cfg.lora.init not in ("pissa", "olora"), "lora.init", cfg.lora.init,
                 "pissa and olora rewrite the base weights, which a 4-bit base model cannot hold; "
                 "use method=lora, or lora.init=default|gaussian")
    if m.peft in PROMPT_LEARNING:
        validate_prompt(cfg.prompt)

    e = cfg.eval
    _require(isinstance(e.enabled, bool) and (e.enabled or m.trains), "eval.enabled", e.enabled,
             "must be true or false, and true for a method that does not train (there would be nothing to do)")
    _require(isinstance(e.tasks, (list, ListConfig)) and len(e.tasks) > 0 and all(isinstance(x, str) for x in e.tasks),
             "eval.tasks", e.tasks, "must be a non-empty list of lm-eval task names, e.g. eval.tasks=[sst2]")
    _require(_is_int(e.num_fewshot) and e.num_fewshot >= 0, "eval.num_fewshot", e.num_fewshot,
             "must be an integer >= 0")
    _require(e.limit is None or (_is_int(e.limit) and e.limit > 0), "eval.limit", e.limit,
             "must be a positive integer or null (score every example)")
    _require(_is_int(cfg.data.dev_size) and cfg.data.dev_size >= 0, "data.dev_size", cfg.data.dev_size,
             "must be an integer >= 0 (development examples carved from the train split; 0: none)")
    _require(_is_number(e.margin) and 0 <= e.margin < 1, "eval.margin", e.margin,
             "must be a number in [0, 1), the smallest difference that matters, e.g. eval.margin=0.01")
    _require(e.pairs is None or (_is_int(e.pairs) and e.pairs > 0), "eval.pairs", e.pairs,
             "must be a positive integer or null (every validation pair)")
    _require(_is_int(e.batch_size) and e.batch_size > 0, "eval.batch_size", e.batch_size, "must be a positive integer")
    _require(e.every_steps is None or (_is_int(e.every_steps) and e.every_steps > 0), "eval.every_steps",
             e.every_steps, "must be a positive integer or null (no scoring during training)")
    _require(isinstance(e.cache, bool), "eval.cache", e.cache, "must be true or false")
    _require(_is_int(e.slice_size) and e.slice_size > 0, "eval.slice_size", e.slice_size, "must be a positive integer")
    validate_prompting(e)
    if m.name == "strongest_baseline":
        validate_baseline_search(m.search)
        _require(cfg.data.dev_size > 0, "data.dev_size", cfg.data.dev_size,
                 "method=strongest_baseline chooses on the development slice: set data.dev_size > 0, e.g. 200")
    validate_stage(cfg)
    for p in e.include_paths:
        _require(Path(p).is_dir(), "eval.include_paths", p, "each entry must be an existing folder of task YAMLs")


def validate_prompting(e: DictConfig) -> None:
    """Template, demonstrations and calibration keys of the eval group."""
    _require(isinstance(e.template, str) and e.template.strip(), "eval.template", e.template,
             f"must name a template, e.g. eval.template={DEFAULT_TEMPLATE}")
    _require(e.fewshot_sampler in FEWSHOT_SAMPLERS, "eval.fewshot_sampler", e.fewshot_sampler,
             f"choose one of {', '.join(FEWSHOT_SAMPLERS)}")
    _require(_is_int(e.fewshot_draws) and e.fewshot_draws > 0, "eval.fewshot_draws", e.fewshot_draws,
             "must be a positive integer (independent draws of demonstrations)")
    for key in ("fewshot_per_example", "fewshot_as_multiturn", "calibrate"):
        _require(isinstance(e[key], bool), f"eval.{key}", e[key], "must be true or false")
    _require(isinstance(e.content_free, (list, ListConfig)) and len(e.content_free) > 0
             and all(isinstance(x, str) for x in e.content_free), "eval.content_free", e.content_free,
             'must be a non-empty list of strings, e.g. ["N/A", "", "[MASK]"]')
    _require(not (e.calibrate and e.fewshot_per_example), "eval.calibrate", e.calibrate,
             "calibration estimates the bias of one prompt, so it needs a fixed draw of demonstrations: "
             "set eval.fewshot_per_example=false")


def validate_baseline_search(search: DictConfig) -> None:
    """method=strongest_baseline: the variants tried on the development slice."""
    def non_empty_list(key, ok, rule):
        values = search[key]
        _require(isinstance(values, (list, ListConfig)) and len(values) > 0 and all(ok(v) for v in values),
                 f"method.search.{key}", values, rule)

    non_empty_list("template", lambda v: isinstance(v, str) and v.strip(), "must be a non-empty list of templates")
    non_empty_list("num_fewshot", lambda v: _is_int(v) and v >= 0, "must be a non-empty list of integers >= 0")
    non_empty_list("fewshot_sampler", lambda v: v in FEWSHOT_SAMPLERS,
                   f"must be a non-empty list of {', '.join(FEWSHOT_SAMPLERS)}")
    non_empty_list("calibrate", lambda v: isinstance(v, bool), "must be a non-empty list of true/false")
    _require(_is_number(search.p_threshold) and 0 <= search.p_threshold <= 1, "method.search.p_threshold",
             search.p_threshold, "must be a p-value in [0, 1] (0: the race drops nothing)")
    _require(_is_int(search.n_startup_steps) and search.n_startup_steps > 1, "method.search.n_startup_steps",
             search.n_startup_steps, "must be an integer > 1 (development examples before a variant can be dropped)")
    _require(search.oracle in ORACLES, "method.search.oracle", search.oracle, f"choose one of {', '.join(ORACLES)}")


def _run_id_or_null(key: str, value) -> None:
    _require(value is None or (isinstance(value, str) and re.fullmatch(RUN_ID_FORMAT, value) is not None), key, value,
             "must be an MLflow run id (32 hex digits, as `mlflow runs list` or the run's page shows) or null")


def validate_stage(cfg: DictConfig) -> None:
    """The RLHF pipeline's stages (conf/stage): which method, which runs they start from, their settings."""
    s, m = cfg.stage, cfg.method
    _require(s.name in STAGES, "stage", s.name, f"choose one of {', '.join(STAGES)}")
    _run_id_or_null("init.run_id", cfg.init.run_id)
    _run_id_or_null("eval.judge_run_id", cfg.eval.judge_run_id)
    if s.name != "sft":
        _require(m.peft == "lora" and m.quantization is None, "method", m.name,
                 f"stage={s.name} trains a LoRA adapter (the pipeline's lineage is adapters on one base model): "
                 "use method=lora")
    if cfg.init.run_id is not None and s.starts_from is None and s.name != "sft":
        raise ConfigError(f"init.run_id={cfg.init.run_id}: stage={s.name} starts from the base model, "
                          "not from a run; drop init.run_id")
    if s.name != "sft":
        _require(cfg.lora.init in ("default", "gaussian"), "lora.init", cfg.lora.init,
                 f"stage={s.name} measures KL against the policy it starts from, which its adapter must start "
                 "as (B = 0): use lora.init=default or gaussian")
    g = cfg.eval.generation
    _require(g.max_gen_toks is None or (_is_int(g.max_gen_toks) and g.max_gen_toks > 0), "eval.generation.max_gen_toks",
             g.max_gen_toks, "must be a positive integer or null (the task's own)")
    _require(g.do_sample is None or isinstance(g.do_sample, bool), "eval.generation.do_sample", g.do_sample,
             "must be true, false or null")
    for key, top in (("temperature", math.inf), ("top_p", 1)):
        _require(g[key] is None or (_is_number(g[key]) and 0 < g[key] <= top), f"eval.generation.{key}", g[key],
                 f"must be a number in (0, {top}] or null")
    if s.name == "dpo":
        _require(_is_number(s.beta) and s.beta > 0, "stage.beta", s.beta, "must be a number > 0, e.g. 0.1")
        _require(s.loss_type in DPO_LOSSES, "stage.loss_type", s.loss_type,
                 f"choose one of TRL's DPO losses: {', '.join(DPO_LOSSES)}")
    if s.name in ("grpo", "rloo", "ppo"):
        _require(_is_int(s.max_completion_length) and s.max_completion_length > 0, "stage.max_completion_length",
                 s.max_completion_length, "must be a positive integer (new tokens per reply)")
        _require(_is_number(s.temperature) and s.temperature > 0, "stage.temperature", s.temperature,
                 "must be a number > 0")
    if s.name in ("grpo", "rloo"):
        n, batch = s.num_generations, cfg.train.batch_size * cfg.train.grad_accum
        _require(_is_int(n) and n >= 2, "stage.num_generations", n,
                 "must be an integer >= 2 (the advantage compares replies to the same prompt)")
        _require(batch % n == 0, "stage.num_generations", n, f"must divide train.batch_size x train.grad_accum "
                 f"({batch}): each batch holds whole groups of replies")
        _require(_is_number(s.beta) and s.beta >= 0, "stage.beta", s.beta, "must be a number >= 0 (0: no KL term)")
        _require(_is_number(s.epsilon) and s.epsilon > 0, "stage.epsilon", s.epsilon, "must be a number > 0")
    if s.name == "ppo":
        for key in ("kl_coef", "vf_coef"):
            _require(_is_number(s[key]) and s[key] >= 0, f"stage.{key}", s[key], "must be a number >= 0")
        for key in ("cliprange", "cliprange_value"):
            _require(_is_number(s[key]) and s[key] > 0, f"stage.{key}", s[key], "must be a number > 0, e.g. 0.2")
        for key in ("gamma", "lam"):
            _require(_is_number(s[key]) and 0 <= s[key] <= 1, f"stage.{key}", s[key], "must be a number in [0, 1]")
        _require(_is_int(s.ppo_epochs) and s.ppo_epochs > 0, "stage.ppo_epochs", s.ppo_epochs,
                 "must be a positive integer")
    mpt = cfg.data.get("max_prompt_tokens")
    _require(mpt is None or (_is_int(mpt) and mpt > 0), "data.max_prompt_tokens", mpt,
             "must be a positive integer or null (no limit)")


def validate_mix(data: DictConfig) -> None:
    """data.mix / data.generated (datasets that take generated instructions, e.g. self_instruct)."""
    mix = data.get("mix", 0.0)
    _require(_is_number(mix) and 0 <= mix <= 1, "data.mix", mix,
             "must be a number in [0, 1] (the share of generated examples in training)")
    _require(not mix or data.get("generated") is not None, "data.mix", mix,
             "needs data.generated=<run id of `python generate_instructions.py`, or its tasks.jsonl>")


def validate_generation(cfg: DictConfig) -> None:
    """generate_instructions.py's own keys (conf/generate_instructions.yaml)."""
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    g = cfg.generation
    for key in ("rounds", "prompts_per_round", "max_new_tokens", "instance_max_new_tokens", "batch_size",
                "instance_examples"):
        _require(_is_int(g[key]) and g[key] >= 1, f"generation.{key}", g[key], "must be an integer >= 1")
    _require(_is_int(g.in_context) and 2 <= g.in_context <= 32, "generation.in_context", g.in_context,
             "must be an integer in 2-32 (the paper: 8)")
    _require(_is_int(g.from_generated) and 0 <= g.from_generated < g.in_context, "generation.from_generated",
             g.from_generated, f"must be an integer in 0-{g.in_context - 1} (below generation.in_context)")
    _require(_is_number(g.temperature) and 0 <= g.temperature <= 5, "generation.temperature", g.temperature,
             "must be a number in 0-5 (0: greedy)")
    _require(_is_number(g.top_p) and 0 < g.top_p <= 1, "generation.top_p", g.top_p, "must be a number in (0, 1]")
    _require(isinstance(g.calibrate_classification, bool), "generation.calibrate_classification",
             g.calibrate_classification, "must be true or false")
    _require(Path(g.seed_file).is_file(), "generation.seed_file", g.seed_file,
             "no such file; point it at a JSONL of seed tasks (instruction, input, output, is_classification)")


def validate_lora(lora: DictConfig) -> None:
    _require(_is_int(lora.r) and lora.r > 0, "lora.r", lora.r, "must be a positive integer, e.g. lora.r=8")
    _require(_is_number(lora.alpha) and lora.alpha > 0, "lora.alpha", lora.alpha,
             "must be a positive number, e.g. lora.alpha=16")
    _require(_is_number(lora.dropout) and 0 <= lora.dropout < 1, "lora.dropout", lora.dropout, "must be in [0, 1)")
    _require(lora.bias in ("none", "all", "lora_only"), "lora.bias", lora.bias, "choose one of none, all, lora_only")
    _require(lora.init in LORA_INITS, "lora.init", lora.init,
             f"choose one of {', '.join(LORA_INITS)}" + close_matches(lora.init, LORA_INITS))
    for key in ("use_dora", "use_rslora"):
        _require(isinstance(lora[key], bool), f"lora.{key}", lora[key], "must be true or false")
    rp = lora.rank_pattern
    _require(rp is None or (isinstance(rp, (dict, DictConfig)) and all(_is_int(v) and v > 0 for v in rp.values())),
             "lora.rank_pattern", rp, "must map module names to positive ranks, e.g. {k_proj: 6}")
    tm = lora.target_modules
    if isinstance(tm, str):
        _require(tm in TARGET_MODULE_PRESETS, "lora.target_modules", tm,
                 f"use a preset ({', '.join(TARGET_MODULE_PRESETS)}) or a list of module names"
                 + close_matches(tm, TARGET_MODULE_PRESETS))
    else:
        _require(isinstance(tm, (list, ListConfig)) and len(tm) > 0 and all(isinstance(x, str) for x in tm),
                 "lora.target_modules", tm, "must be a preset name or a non-empty list of module names")


def validate_prompt(prompt: DictConfig) -> None:
    n = prompt.num_virtual_tokens
    _require(_is_int(n) and n > 0, "prompt.num_virtual_tokens", n, "must be a positive integer, e.g. 20")
    _require(prompt.init in ("text", "random"), "prompt.init", prompt.init, "choose text or random")
    _require(prompt.init != "text" or (isinstance(prompt.init_text, str) and prompt.init_text.strip()),
             "prompt.init_text", prompt.init_text, "must be a non-empty string when prompt.init=text")
    _require(isinstance(prompt.prefix_projection, bool), "prompt.prefix_projection", prompt.prefix_projection,
             "must be true or false")


def validate_quantization(quant: DictConfig, peft) -> None:
    """A quantized base model needs bitsandbytes, an adapter to train, and settings it knows."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "method.quantization needs bitsandbytes, which is not installed: run `make install` "
            "(or `pip install bitsandbytes`), or use method=lora for an unquantized base model"
        )
    _require(peft == "lora", "method.peft", peft, "a quantized base model is frozen: train LoRA adapters on it")
    from transformers import BitsAndBytesConfig

    known = [p for p in inspect.signature(BitsAndBytesConfig).parameters if p != "kwargs"]
    for key in quant:
        _require(key in known, f"method.quantization.{key}", quant[key],
                 "not a BitsAndBytesConfig setting" + close_matches(key, known))
    _require(bool(quant.get("load_in_4bit")) != bool(quant.get("load_in_8bit")), "method.quantization", "",
             "set exactly one of load_in_4bit and load_in_8bit to true")
    qt = quant.get("bnb_4bit_quant_type", "nf4")
    _require(qt in QUANT_TYPES, "method.quantization.bnb_4bit_quant_type", qt,
             f"choose one of {', '.join(QUANT_TYPES)}")
    dt = quant.get("bnb_4bit_compute_dtype", "float32")
    _require(dt in COMPUTE_DTYPES, "method.quantization.bnb_4bit_compute_dtype", dt,
             f"choose one of {', '.join(COMPUTE_DTYPES)}")


def validate_model(model: DictConfig) -> None:
    """The model's settings, and a `name_or_path` that can load here: a folder, or a hub id already
    in the local hub cache (nothing is downloaded at run time)."""
    _require(model.dtype in DTYPES, "model.dtype", model.dtype, f"choose one of {', '.join(DTYPES)}")
    _require(isinstance(model.trust_remote_code, bool), "model.trust_remote_code", model.trust_remote_code,
             "must be true or false")
    source = model.name_or_path
    if source is None:
        return
    _require(isinstance(source, str) and source.strip(), "model.name_or_path", source, "must be a folder or a hub id")
    if source.startswith(("/", ".", "~")) or Path(source).exists():
        folder = Path(source).expanduser()
        _require(folder.is_dir() and (folder / "config.json").is_file(), "model.name_or_path", source,
                 "is not a model folder (no config.json there); give a folder that save_pretrained wrote, or null "
                 "for the bundled model")
        _require(any(folder.glob("*.safetensors")), "model.name_or_path", source,
                 "holds no .safetensors weights; pickled weights (.bin) are never loaded: re-save them with "
                 "save_pretrained(folder, safe_serialization=True)")
        return
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        snapshot_download(source, local_files_only=True)
    except (HFValidationError, OSError, ValueError) as e:
        raise ConfigError(f"model.name_or_path={source!r} is neither a model folder nor a hub id in the local hub "
                          f"cache ({type(e).__name__}); nothing is downloaded at run time: fetch it with "
                          f"`huggingface-cli download {source}` where there is a network, or give a folder") from None


def validate_scheduler(name) -> None:
    from transformers import SchedulerType

    names = [s.value for s in SchedulerType]
    _require(name in names, "train.lr_scheduler", name, "use a transformers scheduler name, e.g. linear or cosine"
             + close_matches(name, names))


def validate_optim(name) -> None:
    from transformers.training_args import OptimizerNames

    names = [o.value for o in OptimizerNames]
    _require(name in names, "train.optim", name, "use a transformers optimizer name, e.g. adamw_torch"
             + close_matches(name, names))
