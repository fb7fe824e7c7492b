"""The strongest baseline's development panel (every prompting variant it raced, with its
development score and, where the oracle ran, its test score), read back from its run. The store is
shared, so each row is taken only as far as its fields have the types the writer gives them
(sweep/scoring/baselines.py)."""

from __future__ import annotations

import mlflow

from sweep.vocabulary import BASELINE_PANEL


def panel_test_scores(run_id: str, metric: str) -> dict[str, float]:
    """{variant: test score} from a strongest baseline's panel, when its oracle ran."""
    task, name = metric.split("/", 1)
    return {r["variant"]: r["test_mean"] for r in stored_panel(run_id)
            if r["task"] == task and r["metric"] == name and r["test_mean"] is not None}


# A panel row's fields (sweep/scoring/baselines.py writes them) and the types the report reads.
PANEL_TEXT, PANEL_NUMBERS, PANEL_FLAGS = ("variant", "task", "metric"), (
    "dev_mean", "dev_draw_sd", "dev_n", "pruned_at", "test_mean", "top_prediction_share"), ("chosen",)


def stored_panel(run_id: str) -> list[dict]:
    """The rows of a strongest baseline's development panel (BASELINE_PANEL). The store is shared:
    a row without its names as text and its development score as a number is left out, any other
    field that is not a number is taken as missing; [] without a readable panel."""
    try:
        panel = mlflow.artifacts.load_dict(f"runs:/{run_id}/{BASELINE_PANEL}")
    except Exception:  # noqa: BLE001  (an older run without it, or not JSON)
        return []
    rows = panel.get("variants") if isinstance(panel, dict) else None
    kept = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in PANEL_TEXT):
            continue
        numbers = {k: float(r[k]) if isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) else None
                   for k in PANEL_NUMBERS}
        if numbers["dev_mean"] is not None:
            kept.append({k: r[k] for k in PANEL_TEXT} | numbers | {k: r.get(k) is True for k in PANEL_FLAGS})
    return kept
