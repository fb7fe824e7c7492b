"""The report's leakage audit, per arm: how many test examples overlap what the chosen adapter saw
(its training rows) and what the chosen baseline saw (its demonstrations), from each run's
`leakage.json` (sweep/scoring/leakage.py); the clean subset (flagged by neither) with its size and
label balance; and the primary verdict on every test example and on the clean ones alone (paired per
example, at the primary claim's level)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import mlflow
import pandas as pd

from analysis import verdict
from analysis.runs import cell, confirmations
from analysis.stats import examples_available, logged_samples, samples
from analysis.summary import group_key, references
from sweep.tracking.untrusted import printable
from sweep.vocabulary import LEAKAGE, RUN_NAME, tag_column

SHOWN = 5                 # flagged examples shown per task


def flagged(run_id: str, task: str) -> list[dict]:
    """The run's flagged test examples of `task` (store text: only well-formed records are kept)."""
    try:
        found = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{LEAKAGE}"))
    except Exception:  # noqa: BLE001  (a run from before the audit, or without scoring)
        return []
    rows = found.get(task) if isinstance(found, dict) else None
    return [f for f in rows if isinstance(f, dict) and isinstance(f.get("doc_id"), int)
            and not isinstance(f.get("doc_id"), bool)] if isinstance(rows, list) else []


def labels(run_id: str, task: str) -> dict:
    """{doc_id: gold label} of a run's logged test examples (lm-eval's `target`)."""
    return {x["doc_id"]: x.get("target") for x in logged_samples(run_id).get(task, [])
            if isinstance(x, dict) and isinstance(x.get("doc_id"), int)}


def balance(gold: dict, ids) -> str:
    """'label 0: 173, label 1: 225' (the count per gold label among `ids`)."""
    counts = Counter(printable(str(gold.get(i)))[:20] for i in ids)
    return ", ".join(f"label {k}: {counts[k]}" for k in sorted(counts)) if counts else "-"


def clean_verdicts(done: pd.DataFrame, comparisons: list[verdict.Comparison]):
    """Per task metric: (the chosen adapter, the chosen baseline, the flags of each, the primary
    verdict on all test examples, the one on the examples neither arm's audit flagged)."""
    out = []
    for c in comparisons:
        if c.role != verdict.PRIMARY:
            continue
        task, name = c.metric.split("/", 1)
        chosen = done[done["run_id"] == c.run_id].iloc[0]
        base = references(done, c.metric).get(group_key(chosen))
        if base is None or base.strongest is None:
            continue
        base = base.strongest
        adapter, baseline = samples(c.run_id, task, name), samples(base["run_id"], task, name)
        adapter_flags = [f for f in flagged(c.run_id, task) if f["doc_id"] in adapter]
        baseline_flags = [f for f in flagged(base["run_id"], task) if f["doc_id"] in baseline]
        dirty = {f["doc_id"] for f in adapter_flags + baseline_flags}
        seeds = [adapter] + [samples(r["run_id"], task, name) for r in confirmations(done, c.run_id)]
        clean = verdict.compare(c.run_id, c.run, c.metric, c.baseline,
                                [{i: s for i, s in seed.items() if i not in dirty} for seed in seeds],
                                {i: s for i, s in baseline.items() if i not in dirty},
                                c.margin, examples_available(base["run_id"], task))
        if clean is not None:
            clean = replace(clean, role=c.role, family=c.family)
        gold = labels(c.run_id, task)
        out.append((chosen, base, c.metric, adapter_flags, baseline_flags,
                    [i for i in adapter if i not in dirty], gold, c, clean))
    return out


def leakage_view(done: pd.DataFrame, comparisons: list[verdict.Comparison]) -> list[tuple[str, pd.DataFrame, str]]:
    """The report's tables: the audit of each arm with both verdicts per task, and the first flagged examples."""
    rows, examples = [], []
    for chosen, base, m, adapter_flags, baseline_flags, clean_ids, gold, everything, clean in \
            clean_verdicts(done, comparisons):
        same = clean is not None and clean.verdict == everything.verdict
        rows.append({"task metric": m, "chosen adapter": cell(chosen, tag_column(RUN_NAME)),
                     "flagged (adapter's training rows)": f"{len(adapter_flags)} of {everything.n}",
                     "chosen baseline": cell(base, tag_column(RUN_NAME)),
                     "flagged (baseline's demonstrations)": f"{len(baseline_flags)} of {everything.n}",
                     "clean (neither)": f"{len(clean_ids)} ({balance(gold, clean_ids)})",
                     "flagged labels": balance(gold, set(gold) - set(clean_ids)),
                     "verdict (all)": everything.sentence(),
                     "verdict (clean only)": clean.sentence() if clean is not None else "no clean example scored",
                     "verdict changes": "no" if same else "YES"})
        for arm, flags in (("adapter", adapter_flags), ("baseline", baseline_flags)):
            examples += [{"task": m.split("/")[0], "arm": arm, "doc_id": f["doc_id"],
                          "kind": printable(f.get("kind", "")), "score": f.get("score"),
                          "test example": printable(f.get("test", ""))[:200],
                          "text it overlaps": printable(f.get("training", ""))[:200]} for f in flags[:SHOWN]]
    if not rows:
        return []
    note = ("Each arm audited on what it saw: the chosen adapter on its training rows, the chosen baseline on the "
            "demonstrations it was prompted with. A test example is flagged when, as normalised words, it lies inside "
            "a seen text, holds one of 5+ words, shares a 13-gram with one (GPT-3's and lm-eval's decontamination), or "
            "is a near-duplicate (ROUGE-L F1 >= 0.8). The primary verdict on every scored test example, and on those "
            "neither arm's audit flagged (paired, at the primary claim's level), with the gold labels of each subset.")
    tables = [("Leakage audit", pd.DataFrame(rows), note)]
    if examples:
        tables.append(("Flagged test examples (the first of each arm)", pd.DataFrame(examples),
                       "Each with the seen text it overlaps (containment/contains/n-gram: words; rouge_l: F1)."))
    return tables
