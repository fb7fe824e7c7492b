"""k-shot scoring at about zero-shot cost: the shared prompt prefix is run through the model once.

Within one draw every example's prompt starts with the same demonstrations (and, with a chat
template, the same system turn). lm-eval's HFLM runs each request's whole prompt; it has no
prefix reuse. `PrefixCachedLM` finds the longest token prefix that all requests of one call share,
computes its key/value cache once, and runs only each request's own tokens on top of a copy of
that cache, so a k-shot example costs about what a zero-shot one does. The LM head and the
softmax over the vocabulary (SmolLM2: 49,152 tokens, a fifth of the model's weights) run only at
the positions whose logits score an answer token (`logits_to_keep`), not at every position of the
suffix as lm-eval does. The result is the same log-likelihood lm-eval computes (tests/test_baselines.py
checks it to 1e-4): the requests are tokenized by lm-eval itself (this class receives its token
lists), and identical inputs (one-token answers of one example) are run once, as lm-eval does.

Falls back to lm-eval's own path when the shared prefix is short (nothing to save), when a request
would be truncated to the model's length, or for prompt-learning adapters, whose virtual tokens
peft inserts itself.
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sweep.scoring.generation import LengthBatchedLM

MIN_SHARED_TOKENS = 16      # below this, copying the cache costs about what it saves
CACHE_TOKENS_PER_BATCH = 32_768  # cached prefix tokens held per batch (bounds the copies' memory)


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """Length of the longest common prefix of `token_lists`."""
    first, n = token_lists[0], min(len(t) for t in token_lists)
    for tokens in token_lists[1:]:
        i = 0
        while i < n and tokens[i] == first[i]:
            i += 1
        n = i
    return n


def answer_positions(request, shared: int) -> range:
    """The positions of a request's suffix (its tokens after the `shared` cached ones) whose logits
    predict its continuation's tokens: from its last context token on."""
    _, context, continuation = request
    first = len(context) - 1 - shared
    return range(first, first + len(continuation))


def keeps_logits(model) -> bool:
    """Whether the (base) model computes logits at chosen positions only (`logits_to_keep`, as
    transformers' causal LMs do; a remote-code model may not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _is_prompt_learning(model) -> bool:
    peft_config = getattr(model, "active_peft_config", None)
    return bool(getattr(peft_config, "is_prompt_learning", False))


class PrefixCachedLM(LengthBatchedLM):
    """lm-eval's HFLM whose log-likelihood requests reuse the key/value cache of their shared prefix
    (and whose generation is length-batched: sweep/scoring/generation.py)."""

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs=None):
        contexts = [context for _, context, _ in requests]
        shared = shared_prefix_length(contexts) if requests else 0
        # every request keeps at least its last context token: its logits score the first answer token
        shared = min(shared, min(len(c) for c in contexts) - 1) if requests else 0
        too_long = any(len(c) + len(cont) > self.max_length + 1 for _, c, cont in requests)
        if shared < MIN_SHARED_TOKENS or too_long or _is_prompt_learning(self.model):
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        return self._with_prefix_cache(requests, shared, disable_tqdm)

    @torch.no_grad()
    def _with_prefix_cache(self, requests, shared: int, disable_tqdm: bool):
        prefix = torch.tensor([requests[0][1][:shared]], dtype=torch.long, device=self.device)
        cache = self.model(prefix, use_cache=True).cache
        # One model input per distinct (context + continuation)[:-1]: requests that share it (the
        # one-token answers of one multiple-choice example) read their log-likelihoods off one run.
        inputs: dict[tuple, list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            inputs.setdefault(tuple((context + continuation)[shared:-1]), []).append(i)
        order = sorted(inputs, key=len, reverse=True)  # longest first, as lm-eval: any OOM comes at once
        batch_size = max(1, min(int(self.batch_size), CACHE_TOKENS_PER_BATCH // shared))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        selective = keeps_logits(self.model)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="Running loglikelihood requests (shared prefix cached)") as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                width = len(batch[0])
                ids = torch.zeros(len(batch), width, dtype=torch.long, device=self.device)  # right-padded
                for row, suffix in enumerate(batch):
                    ids[row, :len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(len(batch))
                # the suffix positions whose logits score an answer token, over the batch's requests
                keep = sorted({p for suffix in batch for i in inputs[suffix]
                               for p in answer_positions(requests[i], shared)}) if selective else range(width)
                only = {"logits_to_keep": torch.tensor(keep, device=self.device)} if selective else {}
                with torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                    enabled=self.mixed_precision_dtype is not None):
                    logits = self.model(ids, cache=past, use_cache=True, **only).logits
                logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # (rows, len(keep), vocab)
                column = {p: j for j, p in enumerate(keep)}
                for row, suffix in enumerate(batch):
                    for i in inputs[suffix]:
                        results[i] = self._answer(requests[i], logprobs[row], shared, column)
                        bar.update(1)
        return results

    def _answer(self, request, logprobs: torch.Tensor, shared: int, column: dict[int, int]) -> tuple[float, bool]:
        """(log-likelihood of the continuation, whether greedy decoding produces it), as lm-eval;
        `logprobs` holds the kept positions, `column` maps a suffix position to its row there."""
        request_str, _, continuation = request
        rows = logprobs[[column[p] for p in answer_positions(request, shared)]]
        tokens = torch.tensor(continuation, dtype=torch.long, device=rows.device)
        answer = (float(rows.gather(1, tokens[:, None]).sum()), bool((rows.argmax(-1) == tokens).all()))
        self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return answer
