"""The trainers of the pipeline's stages, one function each, all taking a `StageRun`: SFT
(transformers' Trainer, sweep/training/sft.py), the reward model (TRL's RewardTrainer), the policy
trained on preferences (DPOTrainer) or by RL against the reward model (GRPOTrainer, RLOOTrainer; PPO
proper in sweep/stages/ppo.py, since TRL 1.x has no PPOTrainer). sweep/stages/table.py names which
stage trains with which.

A policy stage trains a fresh LoRA adapter on its parent policy merged into the base model
(sweep/stages/lineage.py). Given a peft model, TRL's DPO, GRPO and RLOO trainers compute the reference
log-probs through a frozen copy of the adapter as it starts ("ref"); a fresh LoRA adapter starts as
the identity (B = 0), so the reference is exactly the parent policy, as the pipeline asks, without a
second model in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
from omegaconf import DictConfig

from sweep.stages.fused_head import score_labelled_positions_only
from sweep.tracking import records
from sweep.training import sft
from sweep.training.sft import TrainResult, callbacks_for, run_trainer, training_kwargs

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """What a stage's trainer is given."""
    model: object                  # a peft model (or the full model, for SFT's method=full)
    tokenizer: object
    rows: object                   # SFT: tokenized examples; reward, dpo: preference pairs; RL: {"prompt": ...}
    output_dir: str                # the trainer's scratch folder
    stage: DictConfig              # the stage group
    train: DictConfig              # the train group
    seed: int
    judge: object | None = None        # the RL stages: the reward model they train against (a RewardJudge)
    fail_at_step: int | None = None    # debug.fail_at_step: an injected failure
    callbacks: list | None = None      # SFT: intermediate scoring on the development slice
    prune_divergence: bool = False     # SFT: a diverged trial is pruned, not failed (a sweep with a pruner)


def train_sft(run: StageRun) -> TrainResult:
    return sft.train(run.model, run.tokenizer, run.rows, run.train, run.seed, run.output_dir, callbacks=run.callbacks,
                     fail_at_step=run.fail_at_step, prune_divergence=run.prune_divergence)


def trl_kwargs(train: DictConfig, seed: int, output_dir: str, examples: int | None = None) -> dict:
    """TrainingArguments fields for a TRL trainer: the `train` group's, with random batches (TRL
    tokenizes inside the trainer, so transformers cannot group by a length it has not seen)."""
    return training_kwargs(train, seed, output_dir, examples) | {"train_sampling_strategy": "random"}


def train_reward(run: StageRun) -> TrainResult:
    import trl

    args = trl.RewardConfig(**trl_kwargs(run.train, run.seed, run.output_dir, len(run.rows)),
                            max_length=run.train.max_seq_length,
                            center_rewards_coefficient=run.stage.center_rewards_coefficient)
    return run_trl(run, trl.RewardTrainer, args)


def train_dpo(run: StageRun) -> TrainResult:
    import trl

    args = trl.DPOConfig(**trl_kwargs(run.train, run.seed, run.output_dir, len(run.rows)), beta=run.stage.beta,
                         loss_type=[run.stage.loss_type], max_length=run.train.max_seq_length,
                         truncation_mode="keep_end")
    return run_trl(run, trl.DPOTrainer, args)


def rl_kwargs(stage: DictConfig) -> dict:
    """GRPOConfig / RLOOConfig fields shared by both (their names)."""
    return dict(num_generations=stage.num_generations, max_completion_length=stage.max_completion_length,
                temperature=stage.temperature, beta=stage.beta, epsilon=stage.epsilon, log_completions=False)


def train_grpo(run: StageRun) -> TrainResult:
    import trl

    args = trl.GRPOConfig(**trl_kwargs(run.train, run.seed, run.output_dir), **rl_kwargs(run.stage))
    return run_trl(run, trl.GRPOTrainer, args, reward_funcs=[run.judge])


def train_rloo(run: StageRun) -> TrainResult:
    import trl

    args = trl.RLOOConfig(**trl_kwargs(run.train, run.seed, run.output_dir), **rl_kwargs(run.stage))
    return run_trl(run, trl.RLOOTrainer, args, reward_funcs=[run.judge])


def run_trl(run: StageRun, trainer_class, args, **extra) -> TrainResult:
    score_labelled_positions_only()
    trainer = trainer_class(model=run.model, args=args, train_dataset=datasets.Dataset.from_list(run.rows),
                            processing_class=run.tokenizer,
                            callbacks=callbacks_for(None, run.fail_at_step, False, curves=None), **extra)
    return run_trainer(trainer, count_tokens=trained_tokens)


def train_ppo(run: StageRun) -> TrainResult:
    from sweep.stages import ppo

    def log_step(metrics: dict, step: int) -> None:
        records.log_curve({f"train/{k}": v for k, v in metrics.items()}, step=step)

    return ppo.train_policy_and_value(run.model, run.tokenizer, [r["prompt"] for r in run.rows], run.judge,
                                      run.stage, run.train, run.seed, log_step, run.fail_at_step)


def trained_tokens(trainer) -> int:
    """Tokens trained on: TRL's own count (`num_tokens`, logged by its trainers), else the Trainer's."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    return int(counts[-1]) if counts else int(trainer.state.num_input_tokens_seen)
