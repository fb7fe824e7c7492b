"""Judged scoring: a policy's replies to lm-eval's generation tasks, scored by a reward model
(`eval.judge_run_id`) against a reference policy's replies to the same prompts.

The reference is the model with its adapter disabled: the policy the stage started from (its
lineage is merged into the base: SFT for DPO, GRPO, RLOO and PPO), else the base model (SFT, or
instruction data, against the base model). Both sets of replies come from the same lm-eval task,
settings and seed, so the comparison is paired: per task, the mean reward of each, the win rate (ties
count half) with a 95% bootstrap interval over prompts, the KL to the reference on the policy's own
replies (the sequence log-ratio, mean over prompts: exact in expectation when replies are sampled at
temperature 1), and the reply length (reward hacking shows up as length). A model without an adapter
(a baseline) gets reward and length only.
"""

from __future__ import annotations

import logging

import torch

from sweep.data.examples import render_pair
from sweep.scoring.batching import length_batches
from sweep.scoring.evaluate import Prompting, Scores, score
from sweep.stages.preference import RewardJudge, mean_with_ci

log = logging.getLogger(__name__)
SHOWN_PROMPT_CHARS = 400  # the end of each prompt in the replies table (dialogues run long)


def reference_of(model):
    """A context manager in which `model` is its reference policy (adapter disabled); None when it
    has no adapter."""
    return model.disable_adapter if getattr(model, "peft_config", None) else None


def replies(results: dict, task: str) -> dict[int, tuple[dict, str, str]]:
    """doc_id -> (doc, context as fed to the model, reply) of a generation task's logged samples."""
    out = {}
    for sample in (results.get("samples") or {}).get(task, []):
        reply = (sample.get("filtered_resps") or [None])[0]
        if isinstance(reply, str):
            out[sample["doc_id"]] = (sample["doc"], sample["arguments"][0][0], reply)
    return out


@torch.inference_mode()
def sequence_logprobs(model, lm, contexts: list[str], replies_: list[str], batch_size: int) -> list[float]:
    """log p(reply | context) under `model` as it is now (tokenized as lm-eval's generation fed them).

    Batches of similar lengths under a token budget (sweep/scoring/batching.py: one 1,300-token seed task
    no longer pads a whole batch to its length); left-padded, so every reply ends its row and the vocabulary
    projection runs on the last positions only (`logits_to_keep`, counted from the end, which also
    holds when prompt tuning puts virtual tokens first): a batch's logits are rows x the longest reply
    x vocabulary, not rows x the longest sequence x vocabulary (9 GB at 32 rows of 1,450 tokens and a
    49k vocabulary). Positions count from each row's first real token, so padding changes nothing.
    Prompt and prefix tuning take no position ids, and padding would sit between their virtual
    tokens and the text: they score one unpadded row at a time."""
    rows = [(lm.tok_encode(c), lm.tok_encode(r, add_special_tokens=False)) for c, r in zip(contexts, replies_)]
    prompt_learning = getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    batch_size = 1 if prompt_learning else batch_size
    scored = [i for i, (_, r) in enumerate(rows) if r]
    out = [0.0] * len(rows)  # (an empty reply: log p = 0)
    for batch in length_batches([sum(map(len, rows[i])) for i in scored], batch_size):
        batch = [scored[k] for k in batch]
        width = max(sum(map(len, rows[i])) for i in batch)
        keep = max(len(rows[i][1]) for i in batch) + 1  # a reply's tokens are predicted from the position before
        ids = torch.full((len(batch), width), lm.tokenizer.pad_token_id)
        attention = torch.zeros_like(ids)
        for j, i in enumerate(batch):
            tokens = rows[i][0] + rows[i][1]
            ids[j, width - len(tokens):] = torch.tensor(tokens)
            attention[j, width - len(tokens):] = 1
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0).to(model.device)
        positions = {} if prompt_learning else {"position_ids": position_ids}
        logits = model(input_ids=ids.to(model.device), attention_mask=attention.to(model.device), logits_to_keep=keep,
                       **positions).logits
        for j, i in enumerate(batch):
            reply = torch.tensor(rows[i][1])
            picked = torch.log_softmax(logits[j, keep - 1 - len(reply):keep - 1].float(), -1).cpu()
            out[i] = float(picked[torch.arange(len(reply)), reply].sum())
    return out


def generation_tasks(tasks: dict) -> dict:
    return {n: t for n, t in tasks.items() if t.OUTPUT_TYPE == "generate_until"}


def reference_replies(built, tasks: dict, prompting: Prompting, limit: int | None,
                      demonstrations: list | None = None) -> dict[str, dict[int, str]]:
    """task -> doc_id -> the reference policy's reply, for each generation task of `tasks` (none
    without a reference)."""
    tasks = generation_tasks(tasks)
    reference = reference_of(built.model)
    if reference is None or not tasks:
        return {}
    with reference():
        results = score(built.lm, built.task_manager, tasks, prompting, limit, log_samples=True,
                        demonstrations=demonstrations).results
    return {name: {i: reply for i, (_, _, reply) in replies(results, name).items()} for name in tasks}


def judged(built, tasks: dict, scores: Scores, judge: RewardJudge, reference_texts: dict[str, dict[int, str]],
           batch_size: int, seed: int) -> tuple[dict[str, float], dict[str, list]]:
    """(metrics, replies table) for each generation task of `tasks` the policy was scored on (`scores`);
    `reference_texts`: the reference's replies (`reference_replies`, or the cache's)."""
    tasks = generation_tasks(tasks)
    reference = reference_of(built.model)
    metrics, rows = {}, []
    for name, task in tasks.items():
        policy = replies(scores.results, name)
        ids = sorted(policy)
        docs, contexts, texts = ([policy[i][k] for i in ids] for k in range(3))
        prompts = [render_pair(task, doc)[0] for doc in docs]  # the plain prompt, as the judge was trained
        delimiter = task.config.target_delimiter
        rewards = judge.scores(prompts, [delimiter + t.strip() for t in texts])
        lengths = [len(built.lm.tok_encode(t, add_special_tokens=False)) for t in texts]
        metrics |= {f"{name}/reward": sum(rewards) / len(rewards), f"{name}/reply_tokens": sum(lengths) / len(lengths)}
        table = {"task": [name] * len(ids), "prompt": [p[-SHOWN_PROMPT_CHARS:] for p in prompts], "reply": texts,
                 "reward": rewards, "reply_tokens": lengths}
        if reference is not None:
            ref_texts = [reference_texts[name][i] for i in ids]
            ref_rewards = judge.scores(prompts, [delimiter + t.strip() for t in ref_texts])
            wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, ref_rewards)]
            win, low, high = mean_with_ci(wins, seed)
            policy_logp = sequence_logprobs(built.model, built.lm, contexts, texts, batch_size)
            with reference():
                reference_logp = sequence_logprobs(built.model, built.lm, contexts, texts, batch_size)
            kl = [a - b for a, b in zip(policy_logp, reference_logp)]
            ref_lengths = [len(built.lm.tok_encode(t, add_special_tokens=False)) for t in ref_texts]
            metrics |= {f"{name}/reward_reference": sum(ref_rewards) / len(ref_rewards), f"{name}/win_rate": win,
                        f"{name}/win_rate_ci_low": low, f"{name}/win_rate_ci_high": high,
                        f"{name}/kl_to_reference": sum(kl) / len(kl),
                        f"{name}/reply_tokens_reference": sum(ref_lengths) / len(ref_lengths)}
            table |= {"reference_reply": ref_texts, "reference_reward": ref_rewards,
                      "reference_reply_tokens": ref_lengths, "log_ratio": kl}
        rows.append(table)
        log.info("%s: reward %.3f%s", name, metrics[f"{name}/reward"],
                 f", win rate vs reference {metrics[f'{name}/win_rate']:.3f} [{low:.3f}, {high:.3f}]"
                 if reference is not None else "")
    columns = list(dict.fromkeys(k for t in rows for k in t))
    return metrics, {c: [v for t in rows for v in t.get(c, [None] * len(t["task"]))] for c in columns}

