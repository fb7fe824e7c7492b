"""Supervised fine-tuning with transformers' Trainer; the loss curve streams to the active MLflow run."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import optuna
import torch
from omegaconf import DictConfig
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from sweep.data.examples import IGNORE_INDEX
from sweep.runtime import distributed, memory
from sweep.tracking import records

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training diverged; raised at the logging step that saw it, not after all steps."""


CURVES = ("loss", "learning_rate", "grad_norm", "step_seconds", "rss_mb")  # per-step entries logged as curves
TRAINER_SUMMARY = ("train_", "total_flos")  # the Trainer's end-of-training entries (timings): not curves


class MetricsToMlflow(TrainerCallback):
    """Log every Trainer log entry (loss, lr, grad norm) as `train/<name>`, plus the mean wall time
    per step since the previous entry (`train/step_seconds`) and the resident memory
    (`train/rss_mb`: a job whose memory creeps shows it here), and stop on NaN/inf loss (pruning
    the trial instead of failing it when `prune_divergence`: a sweep with a pruner)."""

    def __init__(self, prune_divergence: bool = False, curves: tuple[str, ...] | None = CURVES) -> None:
        self.prune_divergence = prune_divergence
        self.curves = curves  # the entries logged (None: every number; TRL's stages log rewards, KL...)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        logs = logs or {}
        now, (then, step) = time.perf_counter(), self._last
        if state.global_step > step:
            logs = {**logs, "step_seconds": (now - then) / (state.global_step - step)}
            self._last = (now, state.global_step)
        rss = memory.resident_mb()
        logs = {**logs, "rss_mb": rss} if rss is not None else logs
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value):
                name = "training loss" if key == "loss" else "gradient norm"
                message = (f"{name} is {value} at step {state.global_step} (learning rate "
                           f"{logs.get('learning_rate', args.learning_rate):g}); lower train.lr")
                if self.prune_divergence:
                    raise optuna.TrialPruned(message)
                raise NonFiniteLossError(message)
        numeric = {f"train/{k}": float(v) for k, v in logs.items()
                   if (k in self.curves if self.curves is not None else
                       isinstance(v, (int, float)) and not k.startswith(TRAINER_SUMMARY))}
        if numeric and mlflow.active_run():
            records.log_curve(numeric, step=state.global_step)


class AnswerOnlyTrainer(Trainer):
    """Computes the LM head only where a label is set.

    SFT answers are a few tokens after a long prompt, and a small model's vocabulary head is a
    large share of its FLOPs (SmolLM2-135M: 28M of 135M parameters, per token). Asking the model
    for logits at the union of the batch's answer positions (`logits_to_keep` as an index tensor,
    supported by transformers' causal LMs) gives the same loss for a fraction of the head's cost.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        targets = labels[:, 1:]                       # position p predicts token p + 1
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        outputs = model(**inputs, logits_to_keep=keep + virtual_tokens(model))
        logits = outputs.logits.float()               # (batch, len(keep), vocab)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets[:, keep].reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        n = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
        loss = loss / n
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # n counts the answer tokens of every process; DDP averages the processes' gradients,
            # so each process's share is scaled back up (as Trainer.compute_loss does).
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def virtual_tokens(model) -> int:
    """Positions that prompt tuning prepends to the input (their logits come first)."""
    config = getattr(model, "active_peft_config", None)
    return config.num_virtual_tokens if config is not None and config.peft_type == "PROMPT_TUNING" else 0


# Paged optimizers move their state between GPU and CPU memory under pressure; without a GPU
# there is nothing to page, so the same optimizer runs unpaged.
UNPAGED = {
    "paged_adamw_32bit": "adamw_torch", "paged_adamw_8bit": "adamw_8bit",
    "paged_ademamix_32bit": "ademamix", "paged_ademamix_8bit": "ademamix_8bit",
    "paged_lion_32bit": "lion_32bit", "paged_lion_8bit": "lion_8bit",
}


def effective_optim(name: str) -> str:
    """`train.optim`, or its unpaged equivalent when no GPU is present."""
    if name in UNPAGED and not torch.cuda.is_available():
        log.info("no GPU: train.optim=%s runs as %s (paging needs GPU memory)", name, UNPAGED[name])
        return UNPAGED[name]
    return name


class InjectedFailure(RuntimeError):
    """Raised by `debug.fail_at_step`: proves that a job failing mid-training is recorded."""


class FailAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise InjectedFailure(f"debug.fail_at_step={self.step}: failing on purpose at step {self.step}")


@dataclass
class TrainResult:
    seconds: float
    tokens: int                  # non-padding tokens seen
    final_loss: float | None
    bf16: bool                   # whether bf16 autocast was used
    optim: str                   # the optimizer that ran
    threads: int                 # torch intra-op threads
    gradient_checkpointing: bool  # whether activations were recomputed in the backward pass
    rollout_tokens: int = 0       # RL stages: reply tokens generated (where the trainer times generation)
    rollout_seconds: float = 0.0
    attention: str = ""           # the attention implementation the step ran with

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# Dense bf16 peak FLOP/s of GPUs we know; MFU is reported only where the peak is known.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None  # a CPU's peak depends on cores, clocks and vector units: not guessed
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def training_flops(params: int, tokens: int, frozen_base: bool) -> float:
    """FLOPs of training on `tokens`: 2 x parameters per token forward, 4 backward (PaLM's 6x);
    a frozen base (adapters) computes no gradients of its weights, so 2 backward: 4x."""
    return (4 if frozen_base else 6) * params * tokens


def model_flops_utilization(params: int, tokens: int, seconds: float) -> float | None:
    """Training FLOPs as 6 x parameters x tokens (forward + backward; PaLM's estimate), over the
    hardware's peak."""
    peak = peak_flops()
    return 6 * params * tokens / seconds / peak if peak and seconds > 0 else None


def bf16_is_fast() -> bool:
    """bf16 autocast pays off on GPUs that support it and on CPUs with AVX512-BF16 or AMX
    (about 2x per step for SmolLM2-135M on a 2-core AMD EPYC); elsewhere it only emulates."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the guard
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def use_bf16(setting) -> bool:
    return bf16_is_fast() if setting == "auto" else bool(setting)


def optimizer_steps(train: DictConfig, examples: int | None) -> int:
    """train.max_steps, or fewer where train.num_train_epochs passes over `examples` end sooner."""
    if not train.num_train_epochs or not examples:
        return train.max_steps
    per_step = train.batch_size * train.grad_accum * distributed.world_size()
    return max(1, min(train.max_steps, math.ceil(train.num_train_epochs * examples / per_step)))


def training_kwargs(train: DictConfig, seed: int, output_dir: str, examples: int | None = None) -> dict:
    """transformers.TrainingArguments fields from the `train` group (TRL's configs extend them);
    `examples`: how many there are to train on (for train.num_train_epochs)."""
    steps = optimizer_steps(train, examples)
    return dict(
        bf16=use_bf16(train.bf16),
        optim=effective_optim(train.optim),
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        warmup_steps=math.ceil(train.warmup_ratio * steps),
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        train_sampling_strategy=train.sampling,
        gradient_checkpointing=train.gradient_checkpointing,
        torch_compile=train.torch_compile,
        gradient_checkpointing_kwargs={"use_reentrant": False},  # (works with frozen embeddings: LoRA, prompts)
        logging_steps=min(train.logging_steps, steps),
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a diverged loss must be seen (and stop the run), not averaged away
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="all" if train.padding_free else "non_padding",  # (no padding to omit)
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def training_arguments(train: DictConfig, seed: int, output_dir: str, examples: int | None = None) -> TrainingArguments:
    return TrainingArguments(**training_kwargs(train, seed, output_dir, examples))


def run_trainer(trainer, count_tokens=None) -> TrainResult:
    """Train, and say what ran: time, tokens (`count_tokens(trainer)` after training, else the
    Trainer's count of non-padding input tokens), final loss."""
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.eval()
    args = trainer.args
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    tokens = count_tokens(trainer) if count_tokens else trainer.state.num_input_tokens_seen
    return TrainResult(seconds, int(tokens),
                       losses[-1] if losses else output.training_loss, bool(args.bf16), str(args.optim.value),
                       torch.get_num_threads(), bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
                       attention=str(trainer.model.config._attn_implementation))


# Eager attention trains faster than torch's fused CPU kernel on short rows (a SmolLM2 LoRA step: 1.13x
# at 128 tokens, even at 256) and slower on long ones (0.8x at 512), where its attention matrices also
# take memory growing with the square of the row (docs/performance.md): `auto` picks it up to here.
EAGER_MAX_ROW = 128


def training_attention(setting: str, row_tokens: int) -> str | None:
    """The attention implementation SFT's training step runs with (train.attn_implementation), None
    for the model's own: `auto` trains with eager attention on the CPU where no row of a batch is
    longer than EAGER_MAX_ROW tokens (`row_tokens`: the longest example, or a padding-free batch's
    flattened row), else, and on a GPU, with the model's own."""
    if setting != "auto":
        return setting
    return None if torch.cuda.is_available() or row_tokens > EAGER_MAX_ROW else "eager"


def longest_row(dataset, train_cfg: DictConfig) -> int:
    """The longest row a training batch gives the attention: the longest example, or, padding-free,
    a whole batch of the longest flattened into one row."""
    longest = max((len(ids) for ids in dataset["input_ids"]), default=0)
    return longest * train_cfg.batch_size if train_cfg.padding_free else longest


@contextmanager
def attention_while_training(model, wanted: str | None):
    """The model trains with attention `wanted` (None: its own) and gets its own back afterwards,
    for scoring (where the fused kernel is as fast or faster: no backward pass); transformers
    switches a loaded model's attention in place, the weights untouched."""
    own = model.config._attn_implementation
    if wanted is None or wanted == own:
        yield
        return
    model.set_attn_implementation(wanted)
    try:
        yield
    finally:
        model.set_attn_implementation(own)


def callbacks_for(callbacks: list | None, fail_at_step: int | None, prune_divergence: bool,
                  curves: tuple[str, ...] | None = CURVES) -> list:
    """Ours (metrics to MLflow, divergence check, injected failure) around the caller's."""
    return [MetricsToMlflow(prune_divergence, curves), *(callbacks or []),
            *([FailAtStep(fail_at_step)] if fail_at_step else [])]


def batch_collator(tokenizer, padding_free: bool, pad_to_multiple_of: int | None = None):
    """Examples padded to the batch's longest (`DataCollatorForSeq2Seq`; rounded up to a multiple of
    `pad_to_multiple_of`: a bounded set of shapes for a compiled step), or, padding-free, the batch
    flattened into one row whose position ids restart at each example (`DataCollatorWithFlattening`,
    the first label of each example ignored): transformers' attention (sdpa, eager: a block-diagonal
    causal mask built from the position ids; flash attention: the sequence boundaries) keeps each
    example to itself, as TRL's padding_free does. (transformers looks for the examples only when the
    model keeps no key/value cache: the Trainer trains without one, TrainingArguments.use_cache=False.)"""
    if padding_free:
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                  pad_to_multiple_of=pad_to_multiple_of)


def train(model, tokenizer, dataset, train_cfg: DictConfig, seed: int, output_dir: str,
          callbacks: list | None = None, fail_at_step: int | None = None,
          prune_divergence: bool = False) -> TrainResult:
    collator = batch_collator(tokenizer, train_cfg.padding_free, train_cfg.pad_to_multiple_of)
    trainer_class = AnswerOnlyTrainer if train_cfg.answer_only_logits else Trainer
    trainer = trainer_class(model=model, args=training_arguments(train_cfg, seed, output_dir, len(dataset)),
                            train_dataset=dataset,
                            data_collator=collator, callbacks=callbacks_for(callbacks, fail_at_step, prune_divergence))
    wanted = training_attention(train_cfg.attn_implementation, longest_row(dataset, train_cfg))
    with attention_while_training(model, wanted):
        return run_trainer(trainer)
