"""Comparison report of an experiment: did fine-tuning pay off, and which settings matter?

`python -m analysis.report --experiment NAME [--sweep-id ID] [--out reports/NAME] [--tracking-uri URI]`

Reads the runs from MLflow and writes `index.html` (self-contained: plots embedded, opens offline),
`report.md` (with the plots as PNG files beside it) and `runs.csv` (the tidy table: one row per run,
task and metric).
"""

from __future__ import annotations

import argparse
import re
from functools import partial
from pathlib import Path

import mlflow
import pandas as pd

from analysis.cost import cost_view
from analysis.crossover import crossover_view
from analysis.figures import figures
from analysis.importance import importance_view
from analysis.instruction_data import instruction_data_view
from analysis.leakage import leakage_view
from analysis.panel import stored_panel
from analysis.pipeline import pipeline_view
from analysis.render import Code, Report, write
from analysis.runs import BASELINES, STRONGEST, best_by_dev, cell, search_runs, tag, template
from analysis.runs import value as number
from analysis.stats import compare_runs
from analysis.summary import (
    DEGENERATE_SHARE,
    References,
    band_lines,
    by_development_score,
    fmt,
    group_key,
    main_metrics,
    references,
    short_verdict,
    sweep_verdicts,
    verdict_lines,
)
from analysis.verdict import percent
from sweep.config import RUN_ID
from sweep.data.splits import DEV_PREFIX
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.secrets import guard_output, redact
from sweep.scoring.results import is_task_metric
from sweep.tracking.untrusted import printable, stored_list
from sweep.vocabulary import (
    BASELINE_TEMPLATE,
    ERROR,
    METHOD,
    MODEL,
    RUN_NAME,
    STUDY_METHOD,
    SWEEP_ID,
    TRIAL_STATE,
    tag_column,
)

# The LoRA paper's Table 5 columns, in its order.
WEIGHT_TYPES = [("q_proj",), ("k_proj",), ("v_proj",), ("o_proj",), ("q_proj", "k_proj"), ("q_proj", "v_proj"),
                ("q_proj", "k_proj", "v_proj", "o_proj")]


class ReportError(Exception):
    """Nothing to report, with the reason and what to do."""


# --- Reading MLflow --------------------------------------------------------------------------------

def load_runs(experiment: str, sweep_id: str | None) -> pd.DataFrame:
    """Every run of the experiment (or of one sweep, plus the experiment's baselines)."""
    try:
        runs = search_runs(experiment)
    except LookupError as e:
        raise ReportError(str(e)) from None
    if runs.empty:
        raise ReportError(f"experiment {experiment!r} has no runs yet")
    if sweep_id is not None:
        in_sweep = runs[tag_column(SWEEP_ID)] == sweep_id
        if not in_sweep.any():
            ids = ", ".join(runs[tag_column(SWEEP_ID)].dropna().unique()[-5:])
            raise ReportError(f"experiment {experiment!r} has no runs with sweep id {sweep_id!r}; recent ones: {ids}")
        runs = runs[in_sweep | runs[tag_column(METHOD)].isin(BASELINES)]
    return runs.reset_index(drop=True)


def scored(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["status"] == "FINISHED") & (runs[tag_column(METHOD)] != STUDY_METHOD)]


def ranks(row) -> str:
    """The rank of each adapted matrix, e.g. '4/6' for q (r=4) and k (rank_pattern k_proj: 6)."""
    r = cell(row, "params.lora.r", "-")
    tm = cell(row, "params.lora.target_modules", "")
    modules = stored_list(tm)
    per_module = [str(cell(row, f"params.lora.rank_pattern.{m}", r)) for m in modules]
    return "/".join(per_module) if len(set(per_module)) > 1 else str(r)


# --- Tables --------------------------------------------------------------------------------------

def compare(row, ref, task: str, name: str) -> tuple[str, str, str]:
    """(difference with the baseline's name, 95% CI, p) of a paired test of `row` against `ref`."""
    if ref is None or row["run_id"] == ref["run_id"]:
        return "-", "-", "-"
    pair = compare_runs(row["run_id"], ref["run_id"], task, name)
    if pair is None:
        return "-", "-", "-"
    return (f"{pair.diff:+.3f} ({cell(ref, tag_column(RUN_NAME))})", f"[{pair.ci_low:+.3f}, {pair.ci_high:+.3f}]",
            f"{pair.p_value:.2g} ({pair.test}, n={pair.n})")


def headline(done: pd.DataFrame, metric: str, comparisons: list = ()) -> pd.DataFrame:
    """Every finished run scored on the task, against (a) the strongest baseline of the same model
    and limit (chosen on a development slice) and (b) the zero-shot baseline with the run's template;
    the development score beside the test score, and each adapter's verdict."""
    task, name = metric.split("/", 1)
    refs = references(done, metric)
    verdicts = {c.run_id: c for c in comparisons if c.metric == metric}
    rows = []
    for _, r in by_development_score(done).iterrows():
        value = number(r, f"metrics.{metric}")
        if value is None:
            continue
        method = cell(r, tag_column(METHOD))
        row = {"run": visible(cell(r, tag_column(RUN_NAME))), "method": visible(method),
               "template": template(r) if method != STRONGEST else tag(r, BASELINE_TEMPLATE),
               f"{DEV_PREFIX}{metric}": fmt(number(r, f"metrics.{DEV_PREFIX}{metric}")),
               metric: fmt(value, number(r, f"metrics.{metric}_stderr"))}
        ref = refs.get(group_key(r), References())
        row["vs strongest"], row["CI (strongest)"], row["p (strongest)"] = compare(r, ref.strongest, task, name)
        c = verdicts.get(r["run_id"])
        low, high = c.interval if c else (None, None)
        row["verdict interval"] = f"[{low:+.3f}, {high:+.3f}] at {percent(c.level)}" if c else "-"
        row["verdict"] = short_verdict(c)
        zero = ref.zero_shot.get(template(r)) if method not in BASELINES else None
        row["vs zero-shot"], row["CI (zero-shot)"], row["p (zero-shot)"] = compare(r, zero, task, name)
        share = number(r, f"metrics.{task}/top_prediction_share")
        row["top answer share"] = "-" if share is None else f"{share:.0%}" + (
            " degenerate" if share > DEGENERATE_SHARE else "")
        trainable = number(r, "metrics.trainable_params")
        row["trainable params"] = f"{int(trainable):,}" if trainable is not None else "-"
        secs = number(r, "metrics.train_seconds")
        row["train s"] = f"{secs:.0f}" if secs is not None else "-"
        peak = number(r, "metrics.peak_rss_mb")
        row["peak memory MB"] = f"{peak:,.0f}" if peak is not None else "-"
        rows.append(row)
    return pd.DataFrame(rows)  # (in by_development_score's order: the chosen run first; never by a test score)


def baseline_panel(done: pd.DataFrame) -> pd.DataFrame | None:
    """The development-slice panel of the latest strongest-baseline run: every variant tried."""
    chosen = done[done[tag_column(METHOD)] == STRONGEST]
    if chosen.empty:
        return None
    panel = stored_panel(chosen.iloc[-1]["run_id"])
    if not panel:  # (a run without the artifact, or none readable: no panel, no crash)
        return None
    rows = [{"variant": p["variant"], "task": p["task"],
             f"dev {p['metric']}": fmt(p["dev_mean"], p["dev_draw_sd"]).replace("±", "± sd"),
             "dev examples": "-" if p["dev_n"] is None else f"{p['dev_n']:.0f}",
             "race": f"dropped after {p['pruned_at']:.0f}" if p["pruned_at"] else "finished",
             f"test {p['metric']} (oracle, peeking)": fmt(p["test_mean"]),
             "top answer share": "-" if p["top_prediction_share"] is None
             else f"{p['top_prediction_share']:.0%}" + (" degenerate" if p["top_prediction_share"] > DEGENERATE_SHARE
                                                         else ""),
             "chosen": "yes" if p["chosen"] else ""} for p in panel]
    return pd.DataFrame(rows)


def budget_table(done: pd.DataFrame, metrics: list[str]) -> pd.DataFrame | None:
    """Table 5 of the LoRA paper: weight types as columns, rank and each task's metric as rows.
    Shown when the LoRA runs adapt two or more of Table 5's weight-type sets."""
    lora = done[done["params.method.peft"] == "lora"] if "params.method.peft" in done else done.iloc[0:0]
    cols: dict[tuple, list] = {}
    for _, r in lora.iterrows():
        tm = cell(r, "params.lora.target_modules", "")
        if tuple(stored_list(tm)) in WEIGHT_TYPES:
            cols.setdefault(tuple(stored_list(tm)), []).append(r)
    if len(cols) < 2:
        return None
    ordered = [w for w in WEIGHT_TYPES if w in cols]
    header = {w: ", ".join("W" + m[0] for m in w) for w in ordered}
    table = {"": ["rank r", "trainable params"] + metrics}
    for w in ordered:
        runs = cols[w]
        cells = [ranks(runs[0]), f"{int(number(runs[0], 'metrics.trainable_params') or 0):,}"]
        for m in metrics:
            values = [v for v in (number(r, f"metrics.{m}") for r in runs) if v is not None]
            cells.append(fmt(sum(values) / len(values)) if values else "-")
        table[header[w]] = cells
    return pd.DataFrame(table)


def not_finished(runs: pd.DataFrame) -> tuple[dict[str, int], pd.DataFrame]:
    """Counts by outcome (PRUNED told apart from KILLED) and the runs that did not finish."""
    runs = runs[runs[tag_column(METHOD)] != STUDY_METHOD]
    outcome = runs["status"].copy()
    if tag_column(TRIAL_STATE) in runs:
        outcome[runs[tag_column(TRIAL_STATE)] == "PRUNED"] = "PRUNED"
    counts = outcome.value_counts().to_dict()
    bad = runs[outcome != "FINISHED"]
    table = pd.DataFrame({
        "run": bad[tag_column(RUN_NAME)], "outcome": outcome[bad.index], "run id": bad["run_id"],
        "error": bad[tag_column(ERROR)] if tag_column(ERROR) in bad else "-",
    }).fillna("-")
    return counts, table


def visible(value):
    """Store text as it may be shown (control characters made visible); anything else as it is."""
    return printable(value) if isinstance(value, str) else value


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run, task and metric (the CSV)."""
    rows = []
    for _, r in runs[runs[tag_column(METHOD)] != STUDY_METHOD].iterrows():
        for col in runs.columns:
            if not col.startswith("metrics.") or "/" not in col or col.endswith("_stderr"):
                continue
            value = number(r, col)
            name = col[len("metrics."):]
            split = "development" if name.startswith(DEV_PREFIX) else "test"
            task, metric = name.removeprefix(DEV_PREFIX).split("/", 1)
            if value is None or not is_task_metric(name) or task in ("check", "verdict"):
                continue
            rows.append({
                # (store text: control characters shown, not obeyed, by whatever reads the CSV)
                "run_id": r["run_id"], "run": visible(cell(r, tag_column(RUN_NAME))), "status": r["status"],
                "method": visible(cell(r, tag_column(METHOD))), "model": visible(cell(r, tag_column(MODEL))),
                "sweep_id": visible(cell(r, tag_column(SWEEP_ID))),
                "split": split, "task": task, "metric": metric, "value": value, "stderr": number(r, f"{col}_stderr"),
                "lora_r": cell(r, "params.lora.r"), "lora_alpha": cell(r, "params.lora.alpha"),
                "target_modules": cell(r, "params.lora.target_modules"),
                "trainable_params": number(r, "metrics.trainable_params"),
                "train_seconds": number(r, "metrics.train_seconds"), "peak_rss_mb": number(r, "metrics.peak_rss_mb"),
                "model_memory_mb": number(r, "metrics.model_memory_mb"),
            })
    return pd.DataFrame(rows)


# --- Figures ---------------------------------------------------------------------------------------

# --- Assembly --------------------------------------------------------------------------------------

def build_report(experiment: str, sweep_id: str | None) -> tuple[Report, pd.DataFrame]:
    runs = load_runs(experiment, sweep_id)
    done = scored(runs)
    metrics = main_metrics(done) if not done.empty else []
    if not metrics:
        statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
        raise ReportError(f"experiment {experiment!r} has no finished runs with scores yet ({statuses}); "
                          f"wait for a run to finish, or look at the failed ones in the MLflow UI (`make ui`)")
    counts, unfinished = not_finished(runs)
    scope = f"sweep {sweep_id}" if sweep_id else "all sweeps"
    comparisons = sweep_verdicts(done)
    shown = len(runs[runs[tag_column(METHOD)] != STUDY_METHOD])
    rep = Report(
        title=f"Experiment {experiment}: {scope}",
        intro=[*verdict_lines(done, comparisons),
               f"{shown} runs in MLflow ({redact(mlflow.get_tracking_uri())}): "
               + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
               "Each run is compared with (a) the strongest prompt-only or in-context baseline of the same model "
               "and eval.limit, chosen on a development slice of the train split (method=strongest_baseline), and "
               "(b) the zero-shot baseline with the run's own prompt template; the difference is paired per "
               "example (McNemar's exact test for 0/1 scores, a paired permutation test otherwise), with a 95% "
               "paired-bootstrap interval. The verdict column is analysis/verdict.py's: one primary claim per "
               "task (the adapter chosen on development data), its decision exactly where its interval lies. "
               "Rows: the chosen adapter first, then by development score. A baseline giving one answer to more than "
               f"{DEGENERATE_SHARE:.0%} of the examples is flagged degenerate.", *band_lines(done)])
    for metric in metrics:
        rep.tables.append((f"{metric}: every run against the baselines", headline(done, metric, comparisons), ""))
    rep.tables += leakage_view(done, comparisons)
    analysis_figures = {}
    for view in (crossover_view, cost_view, partial(importance_view, comparisons=comparisons)):
        for metric in metrics:
            tables, figs = view(done, metric)
            rep.tables += tables
            analysis_figures |= figs
    panel = baseline_panel(done)
    if panel is not None:
        rep.tables.append(("Baseline variants on the development slice", panel,
                           "Every prompt-only and in-context variant the strongest baseline was chosen from, raced on "
                           "the development slice (examples of the train split, never the test ones): mean ± sd over "
                           "draws of demonstrations, on the examples it was scored on before the race dropped it (if "
                           "it did). The chosen one is the simplest within one standard error of the leader. The test "
                           "column (method.search.oracle) scores every variant on the test examples with the same "
                           "draws: peeking, shown only to see whether the choice transfers."))
    budget = budget_table(done, metrics)
    if budget is not None:
        rep.tables.append(("LoRA budget (Table 5 layout of the LoRA paper)", budget,
                           "The same number of trainable parameters spread over different weight types. "
                           "Rank r per adapted matrix; a metric is the mean when several runs share a column."))
    instruction_tables, instruction_figures = instruction_data_view(done)
    pipeline_tables, pipeline_figures = pipeline_view(done)
    rep.tables += instruction_tables + pipeline_tables
    if not unfinished.empty:
        rep.tables.append(("Runs that did not finish", unfinished,
                           "Failed, killed and pruned runs are counted here and left out of the tables above."))
    best = best_by_dev(done, metrics[0])
    if best is not None:
        command = "-"
        try:
            command = mlflow.artifacts.load_text(f"runs:/{best['run_id']}/command.txt").strip()
        except Exception:  # noqa: BLE001  (an older run without the artifact)
            pass
        how = (f"chosen by its development score ({DEV_PREFIX}{metrics[0]} = "
               f"{fmt(number(best, f'metrics.{DEV_PREFIX}{metrics[0]}'))}); without development scores "
               f"(data.dev_size=0) no run is chosen")
        # (a run id is store text: only one that is an id becomes a command to copy)
        reproduce = Code(f"python reproduce.py {best['run_id']}") if RUN_ID.fullmatch(str(best["run_id"])) else \
            "(its id is not an MLflow run id: the store was changed)"
        name = visible(cell(best, tag_column(RUN_NAME)))
        rep.best = [f"{name} ({visible(best['run_id'])}), {how}: test {metrics[0]} = "
                    f"{fmt(number(best, f'metrics.{metrics[0]}'), number(best, f'metrics.{metrics[0]}_stderr'))}",
                    "Reproduce it (same config, seed and data; compares every metric):",
                    reproduce, "It was run as:", Code(visible(command))]
    rep.figures = figures(runs, done, metrics) | analysis_figures | instruction_figures | pipeline_figures
    return rep, tidy(runs)


def main(argv: list[str] | None = None) -> int:
    from sweep.config import PROJECT_ROOT, ConfigError
    from sweep.runtime.files import check_writable
    from sweep.tracking.store import require_store

    guard_output()
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment name (e.g. quickstart)")
    p.add_argument("--sweep-id", help="only this sweep's runs (plus the experiment's baselines)")
    p.add_argument("--out", help="output folder (default: reports/<experiment>)")
    add_tracking_uri(p)
    a = p.parse_args(argv)
    # (the default folder is named after the experiment: a name is not a path)
    out = Path(a.out) if a.out else PROJECT_ROOT / "reports" / re.sub(r"[^A-Za-z0-9._-]|^\.+", "_", a.experiment)
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out}: a file, not a folder; give a folder for the report's files")
        check_writable("--out", out)
        require_store(a.tracking_uri)
        mlflow.set_tracking_uri(a.tracking_uri)
        rep, csv = build_report(a.experiment, a.sweep_id)
    except (ReportError, ConfigError) as e:
        return refuse(e)
    files = write(rep, csv, out)
    print(f"[report] {len(rep.tables)} tables, {len(rep.figures)} figures: {', '.join(map(str, files))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
