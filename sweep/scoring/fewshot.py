"""Which demonstrations go into a k-shot prompt: lm-eval context samplers.

lm-eval's default sampler gives every scored example its own k random demonstrations, and its
`BalancedSampler` is an unimplemented stub. The in-context literature (Zhao et al. 2021,
"Calibrate Before Use") scores a *draw* instead: one fixed set of k demonstrations shared by
every example, so a score belongs to one prompt, draws can be compared and averaged, contextual
calibration has one prompt to estimate its bias under, and the shared prefix can be computed once
(sweep/scoring/prefix_cache.py). `eval.fewshot_per_example=true` keeps lm-eval's per-example sampling.
"""

from __future__ import annotations

import random
from collections import defaultdict

from lm_eval.api.samplers import ContextSampler


class BalancedSampler(ContextSampler):
    """Equal numbers of demonstrations per label (the remainder to labels chosen at random), in a
    shuffled order, so that no label dominates the prompt."""

    def __init__(self, df=None, *, label_of, rnd=None, **kwargs):
        super().__init__(df, rnd=rnd, **kwargs)
        self.label_of = label_of
        self._by_label = None

    def by_label(self) -> dict:
        """The pool grouped by label, built once (pools hold up to tens of thousands of examples)."""
        if self._by_label is None:
            self._by_label = defaultdict(list)
            for doc in self.fewshot_docs():
                self._by_label[self.label_of(doc)].append(doc)
        return self._by_label

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        by_label = self.by_label()
        labels = sorted(by_label, key=str)
        quota = {label: n // len(labels) for label in labels}
        for label in self.rnd.sample(labels, n % len(labels)):
            quota[label] += 1
        chosen = []
        for label in labels:
            docs = by_label[label]
            # one spare, in case the example being scored is drawn (then it is dropped)
            picked = [d for d in self.rnd.sample(docs, min(len(docs), quota[label] + 1)) if d != eval_doc]
            if len(picked) < quota[label]:
                raise ValueError(f"a balanced draw of {n} needs {quota[label]} examples of label {label!r}; "
                                 f"the pool has {len(picked)}")
            chosen += picked[:quota[label]]
        self.rnd.shuffle(chosen)
        return chosen


class FixedDraw(ContextSampler):
    """The same demonstrations, in the same order, for every example."""

    def __init__(self, demonstrations: list[dict]):
        super().__init__(list(demonstrations))
        self.demonstrations = list(demonstrations)

    def sample(self, n, eval_doc=None, df=None, **kwargs):
        if n != len(self.demonstrations):
            raise ValueError(f"this draw holds {len(self.demonstrations)} demonstrations, not {n}")
        return list(self.demonstrations)

    def set_rnd(self, rnd):  # lm-eval reseeds samplers before scoring; a fixed draw has nothing to seed
        return self


def demonstration_sampler(kind: str, pool: list[dict], label_of, seed: int) -> ContextSampler:
    """A sampler of `kind` over `pool` (label_of: doc -> label, used by `balanced`)."""
    if kind == "balanced":
        return BalancedSampler(pool, label_of=label_of, rnd=seed)
    return ContextSampler(pool, rnd=seed)


def draw_seed(seed: int, draw: int) -> int:
    """The seed of draw `draw` (independent draws, reproducible from the run's seed)."""
    return random.Random(f"{seed}/{draw}").randrange(2**31)


def draw(kind: str, pool: list[dict], k: int, label_of, seed: int) -> list[dict]:
    """One draw of k demonstrations from `pool`."""
    return list(demonstration_sampler(kind, pool, label_of, seed).sample(k))
