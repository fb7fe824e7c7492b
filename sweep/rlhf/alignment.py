"""Steps 2 and 3 of the RLHF pipeline as trainers: the reward model (TRL's RewardTrainer), the policy
trained on preferences (DPOTrainer) or by RL against the reward model (GRPOTrainer, RLOOTrainer; PPO
proper in sweep/rlhf/ppo.py, since TRL 1.x has no PPOTrainer).

A policy stage trains a fresh LoRA adapter on its parent policy merged into the base model
(sweep/rlhf/lineage.py). Given a peft model, TRL's DPO, GRPO and RLOO trainers compute the reference
log-probs through a frozen copy of the adapter as it starts ("ref"); a fresh LoRA adapter starts as
the identity (B = 0), so the reference is exactly the parent policy, as the pipeline asks, without a
second model in memory.
"""

from __future__ import annotations

import logging

import datasets
from omegaconf import DictConfig

from sweep import tracking
from sweep.rlhf.preference import RewardJudge
from sweep.training.sft import TrainResult, callbacks_for, run_trainer, training_kwargs

log = logging.getLogger(__name__)


def trl_kwargs(cfg: DictConfig, output_dir: str) -> dict:
    """TrainingArguments fields for a TRL trainer: the `train` group's, with random batches (TRL
    tokenizes inside the trainer, so transformers cannot group by a length it has not seen)."""
    return training_kwargs(cfg.train, cfg.seed, output_dir) | {
        "train_sampling_strategy": "random"}


def rl_kwargs(stage: DictConfig) -> dict:
    """GRPOConfig / RLOOConfig fields shared by both (their names)."""
    return dict(num_generations=stage.num_generations, max_completion_length=stage.max_completion_length,
                temperature=stage.temperature, beta=stage.beta, epsilon=stage.epsilon, log_completions=False)


def train_stage(cfg: DictConfig, model, tokenizer, rows: list[dict], output_dir: str, judge: RewardJudge | None,
                callbacks: list | None = None) -> TrainResult:
    """Train `model` (a peft model) for stage `cfg.stage.name` on `rows`: preference pairs (reward,
    dpo) or prompts (grpo, rloo, ppo)."""
    stage, name = cfg.stage, cfg.stage.name
    if name == "ppo":
        from sweep.rlhf import ppo

        def log_step(metrics: dict, step: int) -> None:
            tracking.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=step)

        return ppo.train(model, tokenizer, [r["prompt"] for r in rows], judge, stage, cfg.train, cfg.seed,
                         log_step, cfg.debug.fail_at_step)
    import trl

    common = trl_kwargs(cfg, output_dir)
    dataset = datasets.Dataset.from_list(rows)
    extra = {}
    if name == "reward":
        args = trl.RewardConfig(**common, max_length=cfg.train.max_seq_length,
                                center_rewards_coefficient=stage.center_rewards_coefficient)
        trainer_class = trl.RewardTrainer
    elif name == "dpo":
        args = trl.DPOConfig(**common, beta=stage.beta, loss_type=[stage.loss_type],
                             max_length=cfg.train.max_seq_length, truncation_mode="keep_end")
        trainer_class = trl.DPOTrainer
    else:
        config_class, trainer_class = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer),
                                       "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[name]
        args = config_class(**common, **rl_kwargs(stage))
        extra = {"reward_funcs": [judge]}
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=callbacks_for(callbacks, cfg.debug.fail_at_step, False, curves=None), **extra)
    return run_trainer(trainer, count_tokens=trained_tokens)


def trained_tokens(trainer) -> int:
    """Tokens trained on: TRL's own count (`num_tokens`, logged by its trainers), else the Trainer's."""
    counts = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    return int(counts[-1]) if counts else int(trainer.state.num_input_tokens_seen)
