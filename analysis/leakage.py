"""The report's leakage audit: how many test examples overlap what either arm could have learned from
(each run's `leakage.json`, sweep/scoring/leakage.py), and the verdict of the sweep's chosen adapter
against the strongest baseline on every test example and on the clean ones alone (the same examples
for both arms: paired per example, Holm-corrected in the same family as the headline verdicts)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd

from analysis import verdict
from analysis.runs import cell
from analysis.stats import examples_available, samples
from analysis.summary import best_by_dev, group_key, main_metrics, margin_of, references
from sweep.tracking.records import LEAKAGE
from sweep.tracking.untrusted import printable

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


def clean_verdicts(done: pd.DataFrame, comparisons: list[verdict.Comparison]):
    """Per task metric: (the chosen adapter, its flagged examples, the verdict on all test examples,
    the verdict on the clean ones), or nothing where no adapter or strongest baseline was scored."""
    out = []
    for m in main_metrics(done):
        task, name = m.split("/", 1)
        chosen = best_by_dev(done, m)
        strongest = references(done, m).get(group_key(chosen), None) if chosen is not None else None
        if strongest is None or strongest.strongest is None:
            continue
        base = strongest.strongest
        mine = next((c for c in comparisons if c.run_id == chosen["run_id"] and c.metric == m), None)
        if mine is None:
            continue
        flags = flagged(chosen["run_id"], task)
        dirty = {f["doc_id"] for f in flags}
        adapter, baseline = samples(chosen["run_id"], task, name), samples(base["run_id"], task, name)
        clean = verdict.compare(chosen["run_id"], mine.run, m, mine.baseline,
                                {i: s for i, s in adapter.items() if i not in dirty},
                                {i: s for i, s in baseline.items() if i not in dirty},
                                margin_of(chosen), examples_available(base["run_id"], task))
        if clean is not None:  # (Holm-corrected in the headline family, in place of the all-examples one)
            family = verdict.corrected([clean if c is mine else c for c in comparisons])
            clean = family[comparisons.index(mine)]
        out.append((chosen, m, [f for f in flags if f["doc_id"] in adapter], mine, clean))
    return out


def leakage_view(done: pd.DataFrame, comparisons: list[verdict.Comparison]) -> list[tuple[str, pd.DataFrame, str]]:
    """The report's tables: the audit with both verdicts per task, and the first flagged examples."""
    rows, examples = [], []
    for chosen, m, flags, everything, clean in clean_verdicts(done, comparisons):
        same = clean is not None and clean.verdict == everything.verdict
        rows.append({"task metric": m, "chosen adapter": cell(chosen, "tags.mlflow.runName"),
                     "flagged": f"{len(flags)} of {everything.n}",
                     "verdict (all)": everything.sentence(),
                     "verdict (clean only)": clean.sentence() if clean is not None else "no clean example scored",
                     "verdict changes": "no" if same else "YES"})
        examples += [{"task": m.split("/")[0], "doc_id": f["doc_id"], "kind": printable(f.get("kind", "")),
                      "score": f.get("score"), "test example": printable(f.get("test", ""))[:200],
                      "training text it overlaps": printable(f.get("training", ""))[:200]} for f in flags[:SHOWN]]
    if not rows:
        return []
    note = ("Test examples that share a 13-gram of words with what either arm could have learned from (the task's "
            "training and few-shot splits, the trained task, generated tasks; a shorter example when it equals a "
            "training text) or are near-duplicates of it (ROUGE-L F1 >= 0.8), as in GPT-3's and lm-eval's "
            "decontamination. The chosen adapter (by development score) against the strongest baseline on every "
            "scored test example, and on the clean ones alone (paired, Holm-corrected with the headline verdicts).")
    tables = [("Leakage audit", pd.DataFrame(rows), note)]
    if examples:
        tables.append(("Flagged test examples (the first of each task)", pd.DataFrame(examples),
                       "Each with the training text it overlaps (n-gram: words shared in a row; rouge_l: F1)."))
    return tables
