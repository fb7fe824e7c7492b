"""Preference pairs and the reward model: the RLHF pipeline's step 2 (stage=reward) and the judge of
every later stage (eval.judge_run_id).

Pairs come from the task's documents (tasks/hh_rlhf.yaml: prompt, chosen, rejected), rendered as a
policy sees them: the prompt by the task's template, a reply after its target delimiter. So the
reward model scores exactly the text a policy is trained on and generates. Training is TRL's
`RewardTrainer` (Bradley-Terry loss, LoRA on a sequence-classification head); what TRL does not
report, the pairwise accuracy with a paired-bootstrap CI, the margin and the reward distributions on
held-out pairs, is here, as is the judge that scores any (prompt, reply) for the RL stages and for
scoring (`RewardJudge`, a TRL reward function).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.data.examples import render_pair
from sweep.scoring.batching import length_batches
from sweep.stages.lineage import merged
from sweep.training.models import load_model_and_tokenizer

log = logging.getLogger(__name__)

PAIR_FIELDS = ("prompt", "chosen", "rejected")
REPLY_FIELD = "chosen"  # the target field of the task: the reply rendered after the prompt
CI_RESAMPLES = 2000


def split_docs(task, split: str, stage: str) -> list[dict]:
    """The documents of a split, when they are preference pairs; else a ConfigError (checked by the
    job before a store exists)."""
    if split not in task.dataset:
        raise ConfigError(f"data.train_split={split!r}: task {task.config.task} has splits {', '.join(task.dataset)}")
    return checked_pairs(task, list(task.dataset[split]), stage)


def preference_docs(task, split: str, max_samples: int | None, seed: int, tokenizer,
                    max_prompt_tokens: int | None, stage: str, exclude: set[int] = frozenset()) -> list[dict]:
    """A seeded random subset of the split's pairs whose prompt fits `max_prompt_tokens` (`exclude`:
    indices never trained on, the development slice)."""
    docs = [d for i, d in enumerate(split_docs(task, split, stage)) if i not in exclude]
    random.Random(seed).shuffle(docs)
    if max_prompt_tokens:
        docs = [d for d in docs if len(tokenizer(task.doc_to_text(d)).input_ids) <= max_prompt_tokens]
    docs = docs[:max_samples] if max_samples else docs
    if not docs:
        raise ConfigError(f"data.max_prompt_tokens={max_prompt_tokens}: no pair of task {task.config.task} has a "
                          f"prompt that short; raise it")
    return docs


def checked_pairs(task, docs: list[dict], stage: str) -> list[dict]:
    """`docs`, when they are preference pairs (text prompt, chosen, rejected); else a ConfigError."""
    missing = [f for f in PAIR_FIELDS if not docs or not isinstance(docs[0].get(f), str)]
    if missing:
        raise ConfigError(f"stage={stage} trains on preference pairs ({', '.join(PAIR_FIELDS)}); task "
                          f"{task.config.task} has no text field {missing[0]!r}: use data=hh_rlhf")
    return docs


def held_out_pairs(task, limit: int | None, stage: str) -> list[dict]:
    """The first `limit` (or all) pairs of the task's validation split (eval.pairs)."""
    docs = list(task.dataset[task.config.validation_split])
    return checked_pairs(task, docs[:limit] if limit else docs, stage)


def render(task, doc: dict, reply: str) -> tuple[str, str]:
    """(prompt, reply) as the policy sees them: `reply` in place of the task's target."""
    return render_pair(task, {**doc, REPLY_FIELD: reply})


def pair_rows(task, docs: list[dict]) -> list[dict]:
    """TRL's explicit-prompt preference format: prompt, chosen, rejected (replies with their delimiter)."""
    rows = []
    for doc in docs:
        prompt, chosen = render(task, doc, doc["chosen"])
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": render(task, doc, doc["rejected"])[1]})
    return rows


def mean_with_ci(values, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval over examples (each a paired comparison: a pair's
    chosen-vs-rejected, or a prompt's policy-vs-reference), scipy.stats.bootstrap."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2 or np.ptp(x) == 0:
        return mean, mean, mean
    ci = stats.bootstrap((x,), np.mean, vectorized=True, n_resamples=CI_RESAMPLES, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return mean, float(ci.low), float(ci.high)


# ---------------------------------------------------------------- the reward model
class RewardJudge:
    """Scores (prompt, reply) texts with a reward model; callable as a TRL reward function."""

    __name__ = "reward_model"  # (TRL names a reward function's logged metrics after it)

    def __init__(self, model, tokenizer, max_length: int, batch_size: int) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def scores(self, prompts: list[str], replies: list[str]) -> list[float]:
        ids = self._encode([p + r for p, r in zip(prompts, replies)])
        out = [0.0] * len(ids)
        for batch in length_batches([len(x) for x in ids], self.batch_size):  # (similar lengths: little padding)
            padded = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt",
                                        padding_side="right").to(self.model.device)
            for i, reward in zip(batch, self.model(**padded).logits[:, 0].float().tolist()):
                out[i] = reward
        return out

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids, a long dialogue cut from the left: it loses its oldest turns, never the reply
        being judged. (The tokenizer takes the side as a setting only: passed to the call, it is
        ignored and the reply is cut.)"""
        side, self.tokenizer.truncation_side = self.tokenizer.truncation_side, "left"
        try:
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        finally:
            self.tokenizer.truncation_side = side

    def __call__(self, prompts: list[str], completions: list[str], **_) -> list[float]:
        return self.scores(prompts, completions)


def judge_from(ancestor, model_cfg: DictConfig, cache_dir: str, seed: int, max_length: int,
               batch_size: int) -> RewardJudge:
    """The reward model of a stage=reward run: its LoRA adapter (and head) merged into the base."""
    base, tokenizer = load_model_and_tokenizer(model_cfg, cache_dir, seed, reward_head=True)
    return RewardJudge(merged(base, (ancestor,)), tokenizer, max_length, batch_size)


@dataclass
class PairScores:
    chosen: list[float]
    rejected: list[float]

    def metrics(self, task: str, seed: int) -> dict[str, float]:
        c, r = np.array(self.chosen), np.array(self.rejected)
        acc, acc_low, acc_high = mean_with_ci((c > r).astype(float) + 0.5 * (c == r), seed)
        margin, m_low, m_high = mean_with_ci(c - r, seed)
        return {f"{task}/pairwise_accuracy": acc, f"{task}/pairwise_accuracy_ci_low": acc_low,
                f"{task}/pairwise_accuracy_ci_high": acc_high, f"{task}/margin": margin,
                f"{task}/margin_ci_low": m_low, f"{task}/margin_ci_high": m_high,
                f"{task}/reward_chosen": float(c.mean()), f"{task}/reward_rejected": float(r.mean()),
                f"{task}/pairs": float(len(c))}

    def table(self, rows: list[dict]) -> dict[str, list]:
        return {"prompt": [r["prompt"][-300:] for r in rows], "chosen": [r["chosen"] for r in rows],
                "rejected": [r["rejected"] for r in rows], "reward_chosen": self.chosen,
                "reward_rejected": self.rejected}


def score_pairs(judge: RewardJudge, rows: list[dict]) -> PairScores:
    prompts = [r["prompt"] for r in rows]
    return PairScores(judge.scores(prompts, [r["chosen"] for r in rows]),
                      judge.scores(prompts, [r["rejected"] for r in rows]))


def distribution_figure(scores: PairScores, title: str):
    """Histogram of the rewards of chosen and of rejected replies (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.histogram_bin_edges(scores.chosen + scores.rejected, bins=20)
    ax.hist(scores.chosen, bins=bins, alpha=0.6, label="chosen")
    ax.hist(scores.rejected, bins=bins, alpha=0.6, label="rejected")
    ax.set(xlabel="reward", ylabel="pairs", title=title)
    ax.legend()
    fig.tight_layout()
    return fig
