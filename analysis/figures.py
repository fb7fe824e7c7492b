"""Which figures a report shows: a metric against LoRA's rank, alpha and the trainable parameters,
the training loss, the machine's utilisation over each run, and each Optuna study's history or
Pareto front (plots.py draws them)."""

from __future__ import annotations

import mlflow
import pandas as pd

from analysis import plots
from analysis.runs import BASELINES, cell, value
from analysis.summary import baseline_values
from sweep.tracking.untrusted import stored_list
from sweep.vocabulary import METHOD, PARENT_RUN, RUN_NAME, STUDY_METHOD, STUDY_NAME, TRIAL_NUMBER, tag_column

MAX_CURVES = 20  # runs drawn in a figure of curves
MAX_TRIAL_DIGITS = 9  # a trial number beyond a billion is not one a study wrote


def figures(runs: pd.DataFrame, done: pd.DataFrame, metrics: list[str]) -> dict[str, bytes]:
    """{title: PNG}; a figure appears only when the runs vary what it plots."""
    figs = {}
    lora = done[(done.get("params.method.peft") == "lora")] if "params.method.peft" in done else done.iloc[0:0]
    for metric in metrics:
        base = baseline_values(done, metric)
        for key, label in (("params.lora.r", "rank r"), ("params.lora.alpha", "alpha")):
            if key not in lora or lora[key].nunique() < 2:
                continue
            points: dict[str, list] = {}
            for _, r in lora.iterrows():
                y, x = value(r, f"metrics.{metric}"), value(r, key)
                if y is not None and x is not None:
                    points.setdefault(f"{cell(r, tag_column(METHOD))} {target_set(r)}", []).append((x, y))
            figs[f"{metric} vs {label}"] = plots.metric_vs(points, base, label, metric)
        trained = done[~done[tag_column(METHOD)].isin(BASELINES)]
        points = {}
        for _, r in trained.iterrows():
            y, x = value(r, f"metrics.{metric}"), value(r, "metrics.trainable_params")
            if y is not None and x:
                points.setdefault(cell(r, tag_column(METHOD)), []).append((x, y))
        if points:
            figs[f"{metric} vs trainable parameters"] = plots.metric_vs(
                points, base, "trainable parameters (log)", metric, log_x=True, lines=False)
    curves = {}
    client = mlflow.MlflowClient()
    for _, r in done[~done[tag_column(METHOD)].isin(BASELINES)].head(MAX_CURVES).iterrows():
        history = client.get_metric_history(r["run_id"], "train/loss")
        if history:
            curves[cell(r, tag_column(RUN_NAME))] = [(h.step, h.value) for h in history]
    if curves:
        figs["training loss"] = plots.loss_curves(curves)
    figs |= utilisation_figure(done[~done[tag_column(METHOD)].isin(BASELINES)].head(MAX_CURVES), client)
    figs |= study_figures(runs)
    return figs


# What the utilisation figure shows of each run's system metrics (sweep/tracking/system_metrics.py),
# GPUs' where a run had one.
UTILISATION = {"system/cpu_utilization_percentage": "CPU utilisation (%)",
               "system/system_memory_usage_megabytes": "memory used (MB)",
               "system/gpu_0_utilization_percentage": "GPU 0 utilisation (%)",
               "system/gpu_0_memory_usage_megabytes": "GPU 0 memory (MB)"}


def utilisation_figure(trained: pd.DataFrame, client) -> dict[str, bytes]:
    """The machine over each trained run's life: CPU, memory, and GPU where there was one."""
    panels: dict[str, dict[str, list]] = {}
    for _, r in trained.iterrows():
        for key, label in UTILISATION.items():
            history = client.get_metric_history(r["run_id"], key) if f"metrics.{key}" in r.index else []
            if history:
                start = min(h.timestamp for h in history)
                panels.setdefault(label, {})[cell(r, tag_column(RUN_NAME))] = sorted(
                    ((h.timestamp - start) / 1000, h.value) for h in history)
    return {"system utilisation": plots.utilisation(panels)} if panels else {}


def study_figures(runs: pd.DataFrame) -> dict[str, bytes]:
    """Optimization history of each Optuna study in the runs, and its Pareto front when the study
    has two objectives (rebuilt from the MLflow child runs, so no Optuna storage is needed)."""
    figs = {}
    for _, parent in runs[runs[tag_column(METHOD)] == STUDY_METHOD].iterrows():
        study = cell(parent, tag_column(STUDY_NAME), parent["run_id"][:8])
        objectives = stored_list(cell(parent, "params.objectives", "[]"))
        directions = stored_list(cell(parent, "params.directions", "[]"))
        kids = runs[(runs.get(tag_column(PARENT_RUN)) == parent["run_id"]) & (runs["status"] == "FINISHED")]
        kids = kids[kids[tag_column(TRIAL_NUMBER)].map(is_trial_number)]  # (store text: a number, or left out)
        if kids.empty or not objectives:
            continue
        trial = kids[tag_column(TRIAL_NUMBER)].astype(int)
        values = [kids[f"metrics.{o}"] if f"metrics.{o}" in kids else None for o in objectives]
        if any(v is None for v in values):
            continue
        if len(objectives) == 1:
            figs[f"Optuna study {study}: optimization history"] = plots.optimization_history(
                list(zip(trial, values[0])), objectives[0], directions[0] == "maximize")
        elif len(objectives) == 2:
            pts = list(zip(values[0], values[1]))
            sign = [1 if d == "maximize" else -1 for d in directions]
            front = [p for p in pts if not any(all(s * q[i] >= s * p[i] for i, s in enumerate(sign)) and q != p
                                               for q in pts)]
            figs[f"Optuna study {study}: Pareto front"] = plots.pareto_front(pts, front, objectives)
    return figs


def is_trial_number(value) -> bool:
    """Whether a stored trial-number tag is one Optuna could have written (a small decimal)."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_TRIAL_DIGITS


def target_set(row) -> str:
    """The run's target modules as a short label (a preset name, or 'q+k' for a list)."""
    tm = cell(row, "params.lora.target_modules", "-")
    if str(tm).startswith("["):
        return "+".join(m.removesuffix("_proj") for m in stored_list(tm)) or "?"
    return tm
