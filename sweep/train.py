"""Supervised fine-tuning with transformers' Trainer; the loss curve streams to the active MLflow run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from sweep.data import IGNORE_INDEX


class NonFiniteLossError(FloatingPointError):
    """Training diverged; raised at the logging step that saw it, not after all steps."""


CURVES = ("loss", "learning_rate", "grad_norm")  # per-step entries of Trainer's logs


class MetricsToMlflow(TrainerCallback):
    """Log every Trainer log entry (loss, lr, grad norm) as `train/<name>` and stop on NaN/inf loss."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        logs = logs or {}
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss} at step {state.global_step} (learning rate "
                f"{logs.get('learning_rate', args.learning_rate):g}); lower train.lr"
            )
        numeric = {f"train/{k}": float(v) for k, v in logs.items() if k in CURVES}
        if numeric and mlflow.active_run():
            mlflow.log_metrics(numeric, step=state.global_step)


@dataclass
class TrainResult:
    seconds: float
    tokens: int                  # non-padding tokens seen
    final_loss: float | None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def training_arguments(train: DictConfig, seed: int, output_dir: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        warmup_steps=math.ceil(train.warmup_ratio * train.max_steps),
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler,
        train_sampling_strategy=train.sampling,
        logging_steps=min(train.logging_steps, train.max_steps),
        logging_first_step=True,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def train(model, tokenizer, dataset, train_cfg: DictConfig, seed: int, output_dir: str) -> TrainResult:
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    trainer = Trainer(
        model=model,
        args=training_arguments(train_cfg, seed, output_dir),
        train_dataset=dataset,
        data_collator=collator,
        callbacks=[MetricsToMlflow()],
    )
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    model.eval()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return TrainResult(seconds, int(trainer.state.num_input_tokens_seen), losses[-1] if losses else output.training_loss)
