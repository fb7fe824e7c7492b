"""PPO as InstructGPT and DeepSpeed-Chat run it, on a peft policy (stage=ppo).

Why our own: TRL 1.x removed its PPOTrainer (its RL trainers are GRPO and RLOO, which need no value
function), and no maintained package runs PPO on our stack (transformers 5, peft 0.21). So this is
one compact module in TRL's conventions, on top of peft (constant learning rate, AdamW, gradients
clipped at norm 1):

- rollout: sample a reply to each prompt of a batch (KV cache, `stage.temperature`), no gradients;
- reward: the reward model's score on the reply's last token, minus `kl_coef` x (log pi - log pi_ref)
  on every reply token, pi_ref being the parent policy (the model with its adapter disabled);
- values: a linear value head on the policy's last hidden state (TRL's old ValueHead; DeepSpeed-Chat
  trains a separate critic, which at 135M on a CPU would double the memory and time);
- advantages: GAE (`gamma`, `lam`) over reply tokens, whitened over the batch;
- `ppo_epochs` passes of the clipped policy loss plus `vf_coef` x the clipped value loss.

`gae`, `clipped_policy_loss` and `clipped_value_loss` are checked against values worked by hand in
tests/test_rlhf.py.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from sweep.training.sft import NonFiniteLossError, TrainResult, use_bf16

log = logging.getLogger(__name__)
MAX_GRAD_NORM = 1.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over reply tokens: (advantages, returns), each (batch, tokens).
    `mask` marks each reply's tokens (a prefix of the row); the value after a reply's end is 0."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        follows = mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        next_value = values[:, t + 1] * follows if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * follows
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def clipped_policy_loss(logp, old_logp, advantages, mask, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise: mean of max(-A r, -A clip(r, 1-e, 1+e)), r = pi/pi_old;
    and the share of tokens where the clip bound."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(values, old_values, returns, mask, clip: float) -> torch.Tensor:
    """0.5 x mean of max((V - R)^2, (V_old + clip(V - V_old, -e, e) - R)^2)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def reply_mask(replies: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for each reply token up to and including its first EOS, 0 after."""
    is_eos = (replies == eos_id).int()
    after_eos = (torch.cumsum(is_eos, dim=1) - is_eos) > 0
    return (~after_eos).float()


def forward(model, seq, attention, prompt_len: int, temperature: float, value_head=None):
    """Log-probs of the reply tokens (at the sampling temperature) and, with `value_head`, their values."""
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=seq, attention_mask=attention, position_ids=positions,
                output_hidden_states=value_head is not None)
    logits = out.logits[:, prompt_len - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, seq[:, prompt_len:].unsqueeze(-1)).squeeze(-1)
    values = value_head(out.hidden_states[-1][:, prompt_len - 1:-1].float()).squeeze(-1) if value_head else None
    return logp, values


def train_policy_and_value(model, tokenizer, prompts: list[str], judge, stage: DictConfig, train_cfg: DictConfig,
                           seed: int, log_step: Callable[[dict, int], None],
                           fail_at_step: int | None = None) -> TrainResult:
    """`train_cfg.max_steps` PPO steps, each on `train_cfg.batch_size` prompts; `log_step(metrics, step)`."""
    from sweep.training.sft import InjectedFailure

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = use_bf16(train_cfg.bf16)
    model.to(device)
    torch.manual_seed(seed)
    value_head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rollout_seconds = rollout_tokens = trained_tokens = 0
    start, loss = time.perf_counter(), None
    for step in tqdm(range(1, train_cfg.max_steps + 1), desc="PPO steps"):
        picked = [prompts[order[((step - 1) * train_cfg.batch_size + i) % len(order)]]
                  for i in range(train_cfg.batch_size)]
        enc = tokenizer(picked, return_tensors="pt", padding=True, padding_side="left").to(device)
        prompt_len = enc.input_ids.shape[1]
        # --- rollout
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            seq = model.generate(**enc, do_sample=True, temperature=stage.temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=stage.max_completion_length, pad_token_id=pad, eos_token_id=eos)
        rollout_seconds += time.perf_counter() - t0
        mask = reply_mask(seq[:, prompt_len:], eos)
        rollout_tokens += int(mask.sum())
        attention = torch.cat([enc.attention_mask, mask.long()], dim=1)
        texts = tokenizer.batch_decode(seq[:, prompt_len:] * mask.long() + pad * (1 - mask.long()),
                                       skip_special_tokens=True)
        scores = torch.tensor(judge(picked, texts), device=device)
        with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            old_logp, old_values = forward(model, seq, attention, prompt_len, stage.temperature, value_head)
            with model.disable_adapter():  # the parent policy (sweep/stages/lineage.py)
                ref_logp, _ = forward(model, seq, attention, prompt_len, stage.temperature)
        kl = (old_logp - ref_logp) * mask
        rewards = -stage.kl_coef * kl
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += scores
        advantages, returns = gae(rewards, old_values, mask, stage.gamma, stage.lam)
        advantages = whiten(advantages, mask)
        # --- optimisation
        model.train()
        for _ in range(stage.ppo_epochs):
            with torch.autocast(device, torch.bfloat16, enabled=bf16):
                logp, values = forward(model, seq, attention, prompt_len, stage.temperature, value_head)
            pg_loss, clipfrac = clipped_policy_loss(logp, old_logp, advantages, mask, stage.cliprange)
            vf_loss = clipped_value_loss(values, old_values, returns, mask, stage.cliprange_value)
            loss = pg_loss + stage.vf_coef * vf_loss
            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(f"PPO loss is {loss.item()} at step {step}; lower train.lr")
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            trained_tokens += int(attention.sum())
        log_step({"loss": loss.item(), "pg_loss": pg_loss.item(), "vf_loss": vf_loss.item(),
                  "clipfrac": clipfrac.item(), "grad_norm": float(grad_norm), "reward": scores.mean().item(),
                  "kl": kl.sum(1).mean().item(), "reply_tokens": mask.sum(1).mean().item(),
                  "learning_rate": train_cfg.lr}, step)
        if fail_at_step == step:
            raise InjectedFailure(f"debug.fail_at_step={step}: failing on purpose at step {step}")
    model.eval()
    return TrainResult(time.perf_counter() - start, trained_tokens, loss.item() if loss is not None else None, bf16,
                       "adamw_torch", torch.get_num_threads(), False, rollout_tokens=rollout_tokens,
                       rollout_seconds=rollout_seconds)
