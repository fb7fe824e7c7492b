"""When fine-tuning pays for itself: baselines and adapters on one accuracy-versus-cost axis, and the
number of queries after which an adapter's training is repaid by its shorter prompts.

Each run records its training FLOPs (`train_flops`: 6 x parameters x tokens, 4 x for a frozen base),
seconds and machine, and its test pass's cost per query: prompt tokens with the demonstrations
(`query_prompt_tokens`) and measured seconds per 1,000 queries (`query_seconds_per_1k`). A query's
FLOPs are 2 x parameters x its prompt tokens (the forward pass; the answer's few tokens aside). An
adapter repays its training after training / (baseline's per-query cost - its own) queries, in FLOPs
(any machine) and in measured seconds (this machine's, prefix cache and all); never when its queries
cost no less. The fronts: at a given number of queries, the runs that no other run beats on both
total cost (training + queries) and test score. No tool we know of puts prompting and fine-tuning on
one such axis, hence our own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis import plots
from analysis.runs import BASELINES, cell, value
from analysis.summary import References, group_key, references
from sweep.scoring.results import QUERY_SECONDS, QUERY_TOKENS, TRAIN_FLOPS
from sweep.tracking.untrusted import printable
from sweep.vocabulary import MACHINE, METHOD, RUN_NAME, tag_column

VOLUMES = (1_000, 1_000_000)  # query volumes the fronts are drawn at
TIMING_NOISE = 0.10  # measured seconds per query closer than this share of the baseline's are no saving


@dataclass
class Cost:
    run: str
    method: str
    score: float
    train_flops: float         # 0 for a baseline
    train_seconds: float
    query_tokens: float        # a query's prompt, demonstrations included
    query_flops: float         # per query
    query_seconds: float | None  # per query, measured

    def total(self, queries: int) -> float:
        return self.train_flops + queries * self.query_flops


def break_even(training: float, own_per_query: float | None, baseline_per_query: float | None,
               noise: float = 0.0) -> float | None:
    """Queries after which `training` is repaid by cheaper queries than the baseline's; inf when its
    queries cost no less (never repaid; with `noise`, when they save less than that share of the
    baseline's: a measured timing's jitter), None when a cost was not measured."""
    if own_per_query is None or baseline_per_query is None:
        return None
    saved = baseline_per_query - own_per_query
    return training / saved if saved > noise * baseline_per_query else math.inf


def front(costs: list[Cost], queries: int) -> set[int]:
    """Indices of the runs no other run beats on both total cost at `queries` and score."""
    return {i for i, c in enumerate(costs)
            if not any(o.total(queries) <= c.total(queries) and o.score >= c.score
                       and (o.total(queries) < c.total(queries) or o.score > c.score) for o in costs)}


def cost_of(row, metric: str) -> Cost | None:
    score, tokens, params = value(row, f"metrics.{metric}"), value(row, f"metrics.{QUERY_TOKENS}"), \
        value(row, "metrics.total_params")
    if score is None or tokens is None or not params:
        return None
    per_1k = value(row, f"metrics.{QUERY_SECONDS}")
    return Cost(str(cell(row, tag_column(RUN_NAME), row["run_id"])), str(cell(row, tag_column(METHOD), "-")), score,
                value(row, f"metrics.{TRAIN_FLOPS}") or 0.0, value(row, "metrics.train_seconds") or 0.0,
                tokens, 2 * params * tokens, per_1k / 1000 if per_1k is not None else None)


def queries(n: float | None) -> str:
    if n is None:
        return "-"
    return "never (no cheaper queries)" if math.isinf(n) else f"{math.ceil(n):,}"


def cost_view(done: pd.DataFrame, metric: str) -> tuple[list, dict[str, bytes]]:
    """The report's cost table (every run with its costs measured; break-even against the strongest
    baseline of its model, limit and pool) and the fronts at VOLUMES queries."""
    refs = references(done, metric)
    rows, costs, machines = [], [], set()
    for _, r in done.iterrows():
        c = cost_of(r, metric)
        if c is None:
            continue
        strongest = refs.get(group_key(r), References()).strongest
        base = cost_of(strongest, metric) if strongest is not None and c.method not in BASELINES else None
        costs.append(c)
        machines.add(printable(str(cell(r, tag_column(MACHINE), "-"))))  # (store text)
        rows.append({"run": c.run, "method": c.method, f"test {metric}": f"{c.score:.3f}",
                     "training FLOPs": f"{c.train_flops:.3g}", "training s": f"{c.train_seconds:.0f}",
                     "prompt tokens per query": f"{c.query_tokens:.0f}",
                     "s per 1,000 queries": f"{1000 * c.query_seconds:.1f}" if c.query_seconds is not None else "-",
                     "repaid after (FLOPs)": queries(break_even(c.train_flops, c.query_flops, base.query_flops))
                     if base else "-",
                     "repaid after (seconds)": queries(break_even(c.train_seconds, c.query_seconds, base.query_seconds,
                                                                  TIMING_NOISE)) if base else "-"})
    if not any(c.train_flops for c in costs) or len(costs) < 2:
        return [], {}
    fronts = {v: front(costs, v) for v in VOLUMES}
    for i, row in enumerate(rows):
        row["on the front at"] = ", ".join(f"{v:,}" for v in VOLUMES if i in fronts[v]) or "-"
    note = ("Training compute and the cost of a query (its prompt with the demonstrations; seconds measured on "
            f"{'; '.join(sorted(machines))}). An adapter's training is repaid after the number of queries at which the "
            "strongest baseline's longer prompts have cost as much again (by the clock, a saving under "
            f"{TIMING_NOISE:.0%} of the baseline's seconds counts as none: timings jitter); 'on the front': no other "
            "run scores higher for less total cost (training + that many queries).")
    panels = {f"{v:,} queries": [(c.total(v), c.score, c.method, i in fronts[v]) for i, c in enumerate(costs)]
              for v in VOLUMES}
    return [(f"{metric}: cost and break-even", pd.DataFrame(rows), note)], \
        {f"{metric}: score against cost": plots.cost_fronts(panels, metric)}
