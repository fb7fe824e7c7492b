"""Reading a sweep's runs from the tracking store: which runs a report is about (the sweep's own,
plus the baselines it is compared with), their fields, with missing values as None, and which of
them the development scores choose (`best_by_dev`, with its confirming seeds). Store text is
untrusted: filters quote it through `equals`, never interpolate it."""

from __future__ import annotations

import math

import mlflow
import pandas as pd

from sweep.data.splits import DEV_PREFIX
from sweep.runtime.secrets import redact
from sweep.tracking.untrusted import Unquotable, equals
from sweep.training.checks import BASELINES, STRONGEST
from sweep.vocabulary import (
    BASELINE_SEARCH,
    CONFIRMS,
    INFEASIBLE_TAG,
    METHOD,
    MODEL,
    STUDY_METHOD,
    SWEEP_ID,
    TASKS,
    tag_column,
)

DEFAULT_TEMPLATE = "default"  # (runs recorded before templates existed used it)
def search_runs(experiment: str, filter_string: str = "") -> pd.DataFrame:
    """The experiment's runs, oldest first; LookupError (saying what the store holds) when it has
    no such experiment."""
    from sweep.config import close_matches

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        uri = redact(mlflow.get_tracking_uri())
        names = [e.name for e in client.search_experiments() if e.name != "Default"]
        if not names:
            raise LookupError(f"the tracking store {uri} holds no experiments yet: run `make run` or "
                              f"`python sweep.py` first (or pass --tracking-uri)")
        raise LookupError(f"no MLflow experiment named {experiment!r} at {uri}{close_matches(experiment, names)}; "
                          f"its experiments are: {', '.join(sorted(names))}")
    return mlflow.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["start_time ASC"])


def template(row) -> str:
    value = row.get("params.eval.template")
    return DEFAULT_TEMPLATE if value is None or (isinstance(value, float) and math.isnan(value)) else value


def sweep_runs(experiment: str, sweep_id: str) -> pd.DataFrame:
    """The sweep's runs, plus the latest finished baselines of the same model, tasks and eval limit
    that the sweep itself did not score (e.g. `make run` scores them in a first sweep): the
    strongest baseline, the zero-shot baseline of each template the sweep used, a few-shot one."""
    runs = search_runs(experiment, equals(tag_column(SWEEP_ID), sweep_id))
    if not runs.empty:
        runs = runs[runs[tag_column(METHOD)] != STUDY_METHOD].reset_index(drop=True)  # the Optuna parent run
    if runs.empty or runs[tag_column(METHOD)].isin(BASELINES).all():
        return runs
    ref = runs.iloc[0]
    try:
        match = " and ".join(["attributes.status = 'FINISHED'", equals(tag_column(MODEL), ref[tag_column(MODEL)]),
                              equals(tag_column(TASKS), ref[tag_column(TASKS)]),
                              equals("params.`eval.limit`", ref["params.eval.limit"])])
    except Unquotable:  # (a store value no filter can name: no baseline can match it)
        return runs
    wanted = [(STRONGEST, None), ("few_shot", None)]
    wanted += [("zero_shot", t) for t in dict.fromkeys(template(r) for _, r in runs.iterrows())]
    extra = []
    for method, tmpl in wanted:
        have = runs[tag_column(METHOD)] == method
        if tmpl is not None:
            have &= runs.apply(template, axis=1) == tmpl
        if not have.any():
            try:
                extra_filter = f" and {equals('params.`eval.template`', tmpl)}" \
                    if tmpl not in (None, DEFAULT_TEMPLATE) else ""
            except Unquotable:
                continue
            found = search_runs(experiment, f"{match} and tags.method = '{method}'{extra_filter}")
            if tmpl == DEFAULT_TEMPLATE and not found.empty:
                found = found[found.apply(template, axis=1) == DEFAULT_TEMPLATE]
            if not found.empty:
                extra.append(found.iloc[[-1]])
    return pd.concat([*extra, runs], ignore_index=True)


def value(row, col) -> float | None:
    v = row.get(col)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def tag(row, name: str) -> str:
    v = row.get(f"tags.{name}")
    return v if isinstance(v, str) else "-"


def latest_sweep_id(experiment: str) -> str:
    runs = search_runs(experiment)
    if runs.empty:
        raise LookupError(f"experiment {experiment!r} has no runs yet")
    return runs.iloc[-1][tag_column(SWEEP_ID)]


def cell(row, col, default=None):
    """A run's field, `default` when missing or NaN."""
    value = row.get(col, default)
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value


def feasible(row) -> bool:
    """False for the run of an Optuna trial that broke one of its study's constraints
    (hydra.sweeper.constraints): never a sweep's choice, whatever it scored."""
    return not cell(row, f"tags.{INFEASIBLE_TAG}")


SEARCHED_CHARACTERS = 300  # of a baseline's search space in a claim


def searched_among(strongest) -> str:
    """What a strongest baseline was chosen among, as its run recorded it (tag baseline.search; store
    text: one line, at most SEARCHED_CHARACTERS, printed only)."""
    text = strongest.get(tag_column(BASELINE_SEARCH))
    return " ".join(text.split())[:SEARCHED_CHARACTERS] if isinstance(text, str) else ""


def is_adapter(row) -> bool:
    """A finished run that trained something (not a baseline, not an Optuna study's parent run, not a
    seed retraining the chosen configuration: those join its primary verdict)."""
    return row.get("status") == "FINISHED" and row.get(tag_column(METHOD)) not in (*BASELINES, STUDY_METHOD) \
        and not isinstance(row.get(f"tags.{CONFIRMS}"), str)


def confirmations(runs: pd.DataFrame, run_id: str) -> list[pd.Series]:
    """The finished runs that retrained `run_id`'s configuration with other seeds."""
    if f"tags.{CONFIRMS}" not in runs:
        return []
    return [r for _, r in runs.iterrows() if r.get(f"tags.{CONFIRMS}") == run_id and r.get("status") == "FINISHED"]


def best_by_dev(runs: pd.DataFrame, metric: str) -> pd.Series | None:
    """The finished adapter with the best development score: the sweep's choice, made without the
    test examples, among those within the study's constraints; a tie goes to the one with fewer
    trainable parameters (the simpler one)."""
    dev = lambda r: value(r, f"metrics.{DEV_PREFIX}{metric}")  # noqa: E731
    adapters = [r for _, r in runs.iterrows() if is_adapter(r) and feasible(r) and dev(r) is not None]
    # (max keeps the first of equals: the order the store listed them in only decides a full tie)
    return max(adapters, key=lambda r: (dev(r), -(value(r, "metrics.trainable_params") or 0)), default=None)
