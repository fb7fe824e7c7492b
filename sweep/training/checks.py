"""The training group's own checks: model, method, train, lora and prompt keys, before anything loads."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from sweep.config import ConfigError, close_matches, is_int, is_number, require

# Target-module presets for Llama-style attention/MLP names (SmolLM2, Llama, Mistral, Qwen...).
TARGET_MODULE_PRESETS: dict[str, list[str] | None] = {
    "qv": ["q_proj", "v_proj"],
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all-linear": None,  # every linear layer but the output head, whatever the names
}


@dataclass(frozen=True)
class MethodKind:
    """What a method does, as every step that dispatches on it asks (like stages/table.py's STAGES)."""
    trains: bool            # trains weights (an adapter, virtual tokens or the model); else a baseline
    searches_prompts: bool  # races prompting variants on the development slice and reports its choice


METHODS: dict[str, MethodKind] = {
    **dict.fromkeys(("lora", "qlora", "full", "prompt_tuning", "prefix_tuning"), MethodKind(True, False)),
    "zero_shot": MethodKind(False, False), "few_shot": MethodKind(False, False),
    "strongest_baseline": MethodKind(False, True)}
BASELINES = tuple(name for name, kind in METHODS.items() if not kind.trains)  # the prompting arm
STRONGEST = next(name for name, kind in METHODS.items() if kind.searches_prompts)  # the arm's chosen variant
PROMPT_LEARNING = ("prompt_tuning", "prefix_tuning")  # peft types that learn virtual tokens
PEFT_TYPES = ("lora", *PROMPT_LEARNING)
# lora.init -> peft's init_lora_weights
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
SAMPLING = ("random", "sequential", "group_by_length")
DTYPES = ("float32", "bfloat16", "float16")


def validate_method(m: DictConfig) -> None:
    """The method group: a known method, peft type and quantization."""
    require(m.name in METHODS, "method", m.name, f"choose one of {', '.join(METHODS)}")
    require(m.peft is None or m.peft in PEFT_TYPES, "method.peft", m.peft,
            f"choose one of {', '.join(PEFT_TYPES)} or null")
    if m.quantization is not None:
        validate_quantization(m.quantization, m.peft)


def validate_train(t: DictConfig) -> None:
    """The train group (checked for methods that train)."""
    validate_optim(t.optim)
    require(is_int(t.max_steps) and t.max_steps > 0, "train.max_steps", t.max_steps, "must be a positive integer")
    epochs = t.num_train_epochs
    require(epochs is None or (is_number(epochs) and epochs > 0), "train.num_train_epochs", epochs,
            "must be a positive number of passes over the training examples, or null (train.max_steps alone)")
    for key in ("batch_size", "grad_accum"):
        require(is_int(t[key]) and t[key] > 0, f"train.{key}", t[key], "must be a positive integer")
    require(is_number(t.lr) and t.lr > 0, "train.lr", t.lr, "must be a positive number, e.g. train.lr=1e-4")
    require(is_int(t.max_seq_length) and 1 < t.max_seq_length <= MAX_SEQ_LENGTH, "train.max_seq_length",
            t.max_seq_length, f"must be an integer from 2 to {MAX_SEQ_LENGTH:,} (the model's context bounds it)")
    require(t.sampling in SAMPLING, "train.sampling", t.sampling, f"choose one of {', '.join(SAMPLING)}")
    require(is_int(t.logging_steps) and t.logging_steps > 0, "train.logging_steps", t.logging_steps,
            "must be a positive integer")
    require(is_number(t.warmup_ratio) and 0 <= t.warmup_ratio <= 1, "train.warmup_ratio", t.warmup_ratio,
            "must be a number in [0, 1] (the share of steps spent warming up)")
    require(is_number(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay,
            "must be a number >= 0")
    validate_scheduler(t.lr_scheduler)
    require(t.bf16 in (True, False, "auto"), "train.bf16", t.bf16, "choose true, false or auto")
    require(t.attn_implementation in ("auto", *ATTENTION_NAMES), "train.attn_implementation", t.attn_implementation,
            f"choose auto or one of {', '.join(ATTENTION_NAMES)}")
    for key in ("answer_only_logits", "gradient_checkpointing", "padding_free", "torch_compile"):
        require(isinstance(t[key], bool), f"train.{key}", t[key], "must be true or false")
    bucket = t.pad_to_multiple_of
    require(bucket is None or (is_int(bucket) and 0 < bucket <= t.max_seq_length), "train.pad_to_multiple_of", bucket,
            "must be a positive integer up to train.max_seq_length (e.g. 64), or null (each batch to its longest)")
    require(bucket is None or not t.padding_free, "train.pad_to_multiple_of", bucket,
            "rounds up padded batches, and train.padding_free=true has no padding: set one of them")


MAX_RANK = 65536         # no linear layer is wider: a larger rank is a typo
MAX_SEQ_LENGTH = 131072  # longer than any context a bundled or supported model takes


def validate_lora(lora: DictConfig) -> None:
    require(is_int(lora.r) and 0 < lora.r <= MAX_RANK, "lora.r", lora.r,
            f"must be a positive integer up to {MAX_RANK:,}, e.g. lora.r=8")
    require(is_number(lora.alpha) and lora.alpha > 0, "lora.alpha", lora.alpha,
            "must be a positive number, e.g. lora.alpha=16")
    require(is_number(lora.dropout) and 0 <= lora.dropout < 1, "lora.dropout", lora.dropout, "must be in [0, 1)")
    require(lora.bias in ("none", "all", "lora_only"), "lora.bias", lora.bias, "choose one of none, all, lora_only")
    require(lora.init in LORA_INITS, "lora.init", lora.init,
            f"choose one of {', '.join(LORA_INITS)}" + close_matches(lora.init, LORA_INITS))
    for key in ("use_dora", "use_rslora"):
        require(isinstance(lora[key], bool), f"lora.{key}", lora[key], "must be true or false")
    rp = lora.rank_pattern
    require(rp is None or (isinstance(rp, (dict, DictConfig)) and all(is_int(v) and v > 0 for v in rp.values())),
            "lora.rank_pattern", rp, "must map module names to positive ranks, e.g. {k_proj: 6}")
    tm = lora.target_modules
    if isinstance(tm, str):
        require(tm in TARGET_MODULE_PRESETS, "lora.target_modules", tm,
                f"use a preset ({', '.join(TARGET_MODULE_PRESETS)}) or a list of module names"
                + close_matches(tm, TARGET_MODULE_PRESETS))
    else:
        require(isinstance(tm, (list, ListConfig)) and len(tm) > 0 and all(isinstance(x, str) for x in tm),
                "lora.target_modules", tm, "must be a preset name or a non-empty list of module names")


def validate_prompt(prompt: DictConfig) -> None:
    n = prompt.num_virtual_tokens
    require(is_int(n) and n > 0, "prompt.num_virtual_tokens", n, "must be a positive integer, e.g. 20")
    require(prompt.init in ("text", "random"), "prompt.init", prompt.init, "choose text or random")
    require(prompt.init != "text" or (isinstance(prompt.init_text, str) and prompt.init_text.strip()),
            "prompt.init_text", prompt.init_text, "must be a non-empty string when prompt.init=text")
    require(isinstance(prompt.prefix_projection, bool), "prompt.prefix_projection", prompt.prefix_projection,
            "must be true or false")


def validate_quantization(quant: DictConfig, peft) -> None:
    """A quantized base model needs bitsandbytes, an adapter to train, and settings it knows."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "method.quantization needs bitsandbytes, which is not installed: run `make install` "
            "(or `pip install bitsandbytes`), or use method=lora for an unquantized base model"
        )
    require(peft == "lora", "method.peft", peft, "a quantized base model is frozen: train LoRA adapters on it")
    from transformers import BitsAndBytesConfig

    known = [p for p in inspect.signature(BitsAndBytesConfig).parameters if p != "kwargs"]
    for key in quant:
        require(key in known, f"method.quantization.{key}", quant[key],
                "not a BitsAndBytesConfig setting" + close_matches(key, known))
    require(bool(quant.get("load_in_4bit")) != bool(quant.get("load_in_8bit")), "method.quantization", "",
            "set exactly one of load_in_4bit and load_in_8bit to true")
    qt = quant.get("bnb_4bit_quant_type", "nf4")
    require(qt in QUANT_TYPES, "method.quantization.bnb_4bit_quant_type", qt,
            f"choose one of {', '.join(QUANT_TYPES)}")
    dt = quant.get("bnb_4bit_compute_dtype", "float32")
    require(dt in COMPUTE_DTYPES, "method.quantization.bnb_4bit_compute_dtype", dt,
            f"choose one of {', '.join(COMPUTE_DTYPES)}")


# transformers' attention implementations (None: its default); a kernel hub name is never fetched here.
ATTENTION_NAMES = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
ATTENTION = (*ATTENTION_NAMES, None)


def validate_model(model: DictConfig) -> None:
    """The model's settings, and a `name_or_path` that can load here: a folder, or a hub id already
    in the local hub cache (nothing is downloaded at run time)."""
    require(model.dtype in DTYPES, "model.dtype", model.dtype, f"choose one of {', '.join(DTYPES)}")
    require(isinstance(model.trust_remote_code, bool), "model.trust_remote_code", model.trust_remote_code,
            "must be true or false")
    require(model.get("attn_implementation") in ATTENTION, "model.attn_implementation",
            model.get("attn_implementation"), f"choose one of {', '.join(map(str, ATTENTION))}")
    source = model.name_or_path
    if source is None:
        return
    require(isinstance(source, str) and source.strip(), "model.name_or_path", source, "must be a folder or a hub id")
    if source.startswith(("/", ".", "~")) or Path(source).exists():
        folder = Path(source).expanduser()
        require(folder.is_dir() and (folder / "config.json").is_file(), "model.name_or_path", source,
                "is not a model folder (no config.json there); give a folder that save_pretrained wrote, or null "
                "for the bundled model")
        require(any(folder.glob("*.safetensors")), "model.name_or_path", source,
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


def enum_values(module: str, enum: str) -> list[str]:
    """The string values of a transformers enum, read from the installed library's source: importing
    `transformers.training_args` imports torch and peft, ten seconds before a typo could be named.
    Falls back to the import if the source has no such class (a future layout)."""
    package, _, name = module.partition(".")  # (find_spec of a submodule would import its package)
    spec = importlib.util.find_spec(package)
    source = Path(spec.origin).parent / f"{name.replace('.', '/')}.py" if spec and spec.origin else None
    tree = ast.parse(source.read_text()) if source and source.is_file() else ast.Module(body=[])
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == enum:
            values = [n.value.value for n in node.body if isinstance(n, ast.Assign)
                      and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
            if values:
                return values
    return [e.value for e in getattr(importlib.import_module(module), enum)]


def validate_scheduler(name) -> None:
    names = enum_values("transformers.trainer_utils", "SchedulerType")
    require(name in names, "train.lr_scheduler", name, "use a transformers scheduler name, e.g. linear or cosine"
            + close_matches(name, names))


def validate_optim(name) -> None:
    names = enum_values("transformers.training_args", "OptimizerNames")
    require(name in names, "train.optim", name, "use a transformers optimizer name, e.g. adamw_torch"
            + close_matches(name, names))
