"""The pipeline's stages (conf/stage), one entry each: the trainer, what it trains on, how its runs
are named, whether a reward model judges it, and the checks of its own keys. A new stage is one
entry here, its trainer (sweep/stages/trainers.py) and its conf/stage/<name>.yaml; nothing else
dispatches on a stage's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from sweep.config import ConfigError, is_int, is_number, require, run_id_or_null

if TYPE_CHECKING:  # (the trainers import TRL and torch: checking a config needs neither)
    from sweep.stages.trainers import StageRun
    from sweep.training.sft import TrainResult

POLICY_HEAD, JUDGE_HEAD = "CAUSAL_LM", "SEQ_CLS"  # peft task types: a policy generates, a reward model classifies


def no_checks(stage: DictConfig, train: DictConfig) -> None:
    pass


@dataclass(frozen=True)
class Stage:
    name: str
    trainer: str               # its function in sweep/stages/trainers.py, imported when it trains
    data: str                  # what it trains on: "examples" (tokenized), "pairs" (chosen vs rejected), "prompts"
    label: str = ""            # its run names' prefix, formatted with the stage group (e.g. dpo-b0.1-lora-r8-...)
    judged: bool = False       # trains against a reward model (eval.judge_run_id, or the sweep's reward run)
    head: str = POLICY_HEAD    # its adapter's peft task type
    multi_process: bool = False  # may run as several training processes (accelerate)
    check: Callable[[DictConfig, DictConfig], None] = no_checks  # (stage group, train group) -> ConfigError

    @property
    def is_policy(self) -> bool:
        return self.head == POLICY_HEAD

    def train(self, run: StageRun) -> TrainResult:
        from sweep.stages import trainers

        return getattr(trainers, self.trainer)(run)


@cache
def dpo_losses() -> tuple[str, ...]:
    """DPOConfig.loss_type's values, as the installed TRL documents them (its field's help), so a TRL
    upgrade that adds a loss needs no change here; empty when the help cannot be read (TRL checks)."""
    import dataclasses

    import trl

    field = {f.name: f for f in dataclasses.fields(trl.DPOConfig)}["loss_type"]
    return tuple(re.findall(r"`'([a-z0-9_]+)'`", field.metadata.get("help", "")))


def check_dpo(s: DictConfig, train: DictConfig) -> None:
    require(is_number(s.beta) and s.beta > 0, "stage.beta", s.beta, "must be a number > 0, e.g. 0.1")
    losses = dpo_losses()
    require(not losses or s.loss_type in losses, "stage.loss_type", s.loss_type,
            f"choose one of TRL's DPO losses: {', '.join(losses)}")


def check_replies(s: DictConfig) -> None:
    """The keys of stages that generate replies to train on."""
    require(is_int(s.max_completion_length) and s.max_completion_length > 0, "stage.max_completion_length",
            s.max_completion_length, "must be a positive integer (new tokens per reply)")
    require(is_number(s.temperature) and s.temperature > 0, "stage.temperature", s.temperature,
            "must be a number > 0")


def check_group_rl(s: DictConfig, train: DictConfig) -> None:
    """GRPO and RLOO: groups of replies to each prompt."""
    check_replies(s)
    n, batch = s.num_generations, train.batch_size * train.grad_accum
    require(is_int(n) and n >= 2, "stage.num_generations", n,
            "must be an integer >= 2 (the advantage compares replies to the same prompt)")
    require(batch % n == 0, "stage.num_generations", n, f"must divide train.batch_size x train.grad_accum "
            f"({batch}): each batch holds whole groups of replies")
    require(is_number(s.beta) and s.beta >= 0, "stage.beta", s.beta, "must be a number >= 0 (0: no KL term)")
    require(is_number(s.epsilon) and s.epsilon > 0, "stage.epsilon", s.epsilon, "must be a number > 0")


def check_ppo(s: DictConfig, train: DictConfig) -> None:
    check_replies(s)
    for key in ("kl_coef", "vf_coef"):
        require(is_number(s[key]) and s[key] >= 0, f"stage.{key}", s[key], "must be a number >= 0")
    for key in ("cliprange", "cliprange_value"):
        require(is_number(s[key]) and s[key] > 0, f"stage.{key}", s[key], "must be a number > 0, e.g. 0.2")
    for key in ("gamma", "lam"):
        require(is_number(s[key]) and 0 <= s[key] <= 1, f"stage.{key}", s[key], "must be a number in [0, 1]")
    require(is_int(s.ppo_epochs) and s.ppo_epochs > 0, "stage.ppo_epochs", s.ppo_epochs, "must be a positive integer")


FIRST_STAGE = "sft"  # what every run is that names no stage (runs from before the pipeline existed, too)
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage(FIRST_STAGE, "train_sft", "examples", multi_process=True),
    Stage("reward", "train_reward", "pairs", "reward", head=JUDGE_HEAD),
    Stage("dpo", "train_dpo", "pairs", "dpo-b{beta:g}", check=check_dpo),
    Stage("grpo", "train_grpo", "prompts", "grpo-b{beta:g}", judged=True, check=check_group_rl),
    Stage("rloo", "train_rloo", "prompts", "rloo-b{beta:g}", judged=True, check=check_group_rl),
    Stage("ppo", "train_ppo", "prompts", "ppo-kl{kl_coef:g}", judged=True, check=check_ppo),
)}
POLICY_STAGES = tuple(name for name, s in STAGES.items() if s.is_policy)
JUDGE_STAGE = next(name for name, s in STAGES.items() if not s.is_policy)  # the reward model's stage


def validate_stage(s: DictConfig, method: DictConfig, lora: DictConfig, init_run_id: str | None,
                   train: DictConfig) -> None:
    """The stage group, and what a stage asks of the method it trains (conf/stage)."""
    require(s.name in STAGES, "stage", s.name, f"choose one of {', '.join(STAGES)}")
    run_id_or_null("init.run_id", init_run_id)
    if s.name == FIRST_STAGE:
        return
    require(not train.padding_free, "train.padding_free", train.padding_free,
            f"stage={s.name} batches with TRL's collator; padding-free batches are stage={FIRST_STAGE}'s: "
            "set train.padding_free=false")
    require(train.pad_to_multiple_of is None, "train.pad_to_multiple_of", train.pad_to_multiple_of,
            f"stage={s.name} pads with TRL's collator; rounded-up batches are stage={FIRST_STAGE}'s: "
            "set train.pad_to_multiple_of=null")
    require(train.attn_implementation == "auto", "train.attn_implementation", train.attn_implementation,
            f"stage={s.name} trains with the model's attention (model.attn_implementation); a training step's own "
            f"is stage={FIRST_STAGE}'s: set train.attn_implementation=auto")
    require(method.peft == "lora" and method.quantization is None, "method", method.name,
            f"stage={s.name} trains a LoRA adapter (the pipeline's lineage is adapters on one base model): "
            "use method=lora")
    if init_run_id is not None and s.starts_from is None:
        raise ConfigError(f"init.run_id={init_run_id}: stage={s.name} starts from the base model, "
                          "not from a run; drop init.run_id")
    require(lora.init in ("default", "gaussian"), "lora.init", lora.init,
            f"stage={s.name} measures KL against the policy it starts from, which its adapter must start "
            "as (B = 0): use lora.init=default or gaussian")
    STAGES[s.name].check(s, train)
