"""The end-of-sweep comparison table: each run of a sweep beside the prompt-only and in-context
baselines of the same model and task.

`python -m analysis.summary --experiment NAME [--sweep-id ID] [--tracking-uri URI]`
"""

from __future__ import annotations

import argparse
import math

import mlflow
import pandas as pd

BASELINES = ("zero_shot", "few_shot")
STUDY = "optuna-study"  # method tag of an Optuna study's parent run


def search_runs(experiment: str, filter_string: str = "") -> pd.DataFrame:
    """The experiment's runs, oldest first; LookupError (saying what the store holds) when it has
    no such experiment."""
    from sweep.config import close_matches

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        uri = mlflow.get_tracking_uri()
        names = [e.name for e in client.search_experiments() if e.name != "Default"]
        if not names:
            raise LookupError(f"the tracking store {uri} holds no experiments yet: run `make run` or "
                              f"`python sweep.py` first (or pass --tracking-uri)")
        raise LookupError(f"no MLflow experiment named {experiment!r} at {uri}{close_matches(experiment, names)}; "
                          f"its experiments are: {', '.join(sorted(names))}")
    return mlflow.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["start_time ASC"])


def sweep_runs(experiment: str, sweep_id: str) -> pd.DataFrame:
    """The sweep's runs, plus the latest finished baselines of the same model, tasks and eval limit
    when the sweep itself scored none (e.g. `make run` scores them in a first sweep)."""
    runs = search_runs(experiment, f"tags.sweep_id = '{sweep_id}'")
    if not runs.empty:
        runs = runs[runs["tags.method"] != STUDY].reset_index(drop=True)  # the Optuna parent run
    if runs.empty or runs["tags.method"].isin(BASELINES).all():
        return runs
    ref = runs.iloc[0]
    match = " and ".join([
        "attributes.status = 'FINISHED'",
        f"tags.model = '{ref['tags.model']}'",
        f"tags.tasks = '{ref['tags.tasks']}'",
        f"params.`eval.limit` = '{ref['params.eval.limit']}'",
    ])
    extra = []
    for method in BASELINES:
        if not (runs["tags.method"] == method).any():
            found = search_runs(experiment, f"{match} and tags.method = '{method}'")
            if not found.empty:
                extra.append(found.iloc[[-1]])
    return pd.concat([*extra, runs], ignore_index=True)


def main_metrics(runs: pd.DataFrame) -> list[str]:
    """One headline metric per scored task: `acc` when the task has it, else its first metric."""
    tasks = {t for tags in runs["tags.tasks"].dropna() for t in tags.split(",")}
    by_task: dict[str, list[str]] = {}
    for col in runs.columns:
        if col.startswith("metrics.") and "/" in col and not col.endswith("_stderr"):
            task, metric = col[len("metrics."):].split("/", 1)
            if task in tasks and metric != "n_samples":
                by_task.setdefault(task, []).append(metric)
    return [f"{t}/{'acc' if 'acc' in ms else sorted(ms)[0]}" for t, ms in sorted(by_task.items())]


def fmt(value, stderr=None) -> str:
    """'0.863 ± 0.017', '0.863', or '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.3f}"
    return f"{value:.3f} ± {stderr:.3f}"


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    get = lambda row, col: row[col] if col in row and not pd.isna(row[col]) else None  # noqa: E731
    metrics, rows = main_metrics(runs), []
    for _, r in runs.iterrows():
        method = r.get("tags.method")
        row = {
            "run": r.get("tags.mlflow.runName"),
            "method": method,
            "r": r.get("params.lora.r") if r.get("params.method.peft") == "lora" else "-",
            "k": r.get("params.method.num_fewshot"),
        }
        for m in metrics:
            row[m] = fmt(get(r, f"metrics.{m}"), get(r, f"metrics.{m}_stderr"))
        trainable = get(r, "metrics.trainable_params")
        row["trainable params"] = f"{int(trainable):,}" if trainable is not None else "-"
        secs = get(r, "metrics.train_seconds")
        row["train s"] = f"{secs:.0f}" if secs is not None else "-"
        row["status"] = r.get("status")
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(tracking_uri: str, experiment: str, sweep_id: str) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    runs = sweep_runs(experiment, sweep_id)
    if runs.empty:
        return f"No runs recorded for sweep {sweep_id} in experiment {experiment!r}."
    table = comparison_table(runs).to_string(index=False)
    return f"\nSweep {sweep_id} — experiment {experiment!r} ({tracking_uri})\n{table}\n"


def main(argv=None) -> None:
    from sweep.config import PROJECT_ROOT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-id", help="default: the experiment's latest sweep")
    p.add_argument("--tracking-uri", default=f"sqlite:///{PROJECT_ROOT}/mlflow.db")
    a = p.parse_args(argv)
    mlflow.set_tracking_uri(a.tracking_uri)
    sweep_id = a.sweep_id
    if sweep_id is None:
        runs = search_runs(a.experiment)
        if runs.empty:
            raise SystemExit(f"experiment {a.experiment!r} has no runs yet")
        sweep_id = runs.iloc[-1]["tags.sweep_id"]
    print(summary_text(a.tracking_uri, a.experiment, sweep_id))


if __name__ == "__main__":
    main()
