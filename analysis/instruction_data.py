"""The report's instruction-data view: every score against the number of training instructions, per
source of the instructions (hand-written seed tasks, generated ones, mixes), beside the base model.

For each task the runs were scored on: its lm-eval metrics (those logged with a standard error:
ROUGE-L for the instruction tasks) with the difference from the base model's zero-shot replies paired
per example (95% bootstrap interval); and, when a reward model judged the replies
(`eval.judge_run_id`), the win rate against the base model's replies with its interval and the mean
reply length, since a judge that favours short or long replies shows up only there. One table holds
both scores, so a reader sees whether ROUGE-L and the judge agree. Shown when the runs train on
instruction data from two or more sources, or at two or more sizes.
"""

from __future__ import annotations

import pandas as pd

from analysis import plots
from analysis.runs import BASELINES, template, value
from analysis.stats import compare_runs
from analysis.summary import baseline_values, fmt, group_key, references
from sweep.vocabulary import METHOD, RUN_NAME, tag_column

WIN_RATE, REPLY_TOKENS = "win_rate", "reply_tokens"  # what sweep/stages/judging.py logs per task
TIE = 0.5  # the win rate of the base model's replies against themselves
BASE = "base model, zero-shot"


def data_source(row) -> str | None:
    """Where a run's training instructions came from (data.mix: the generated share); None for
    runs that do not train on instruction data."""
    mix = value(row, "params.data.mix")
    if mix is None or row.get(tag_column(METHOD)) in BASELINES:
        return None
    return {0.0: "hand-written", 1.0: "generated"}.get(mix, f"mix {mix:g} generated")


def trained(done: pd.DataFrame) -> list[tuple[str, int, pd.Series]]:
    """(source, training instructions, run) of each run trained on instruction data, by generated
    share, then size."""
    rows = [(data_source(r), value(r, "metrics.train_examples"), r) for _, r in done.iterrows()]
    rows = [(src, int(n), r) for src, n, r in rows if src is not None and n]
    return sorted(rows, key=lambda x: (value(x[2], "params.data.mix"), x[1]))


def scores(runs: list[pd.Series]) -> dict[str, list[str]]:
    """task -> its lm-eval metrics the runs logged with a standard error (a judge's scores have none)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        for col in r.index:
            if col.startswith("metrics.") and col.endswith("_stderr") and value(r, col) is not None:
                task, metric = col[len("metrics."):-len("_stderr")].split("/", 1)
                out.setdefault(task, [])
                if metric not in out[task]:
                    out[task].append(metric)
    return dict(sorted(out.items()))


def limit(row) -> str:
    """The examples scored per task: eval.limit, or all of them."""
    v = value(row, "params.eval.limit")
    return "all" if v is None else f"{v:g}"


def base_run(refs: dict, run: pd.Series) -> pd.Series | None:
    """The zero-shot run of the same model, eval.limit and template as `run` (`refs`: `references`
    of the metric)."""
    group = refs.get(group_key(run))
    return group.zero_shot.get(template(run)) if group else None


def cells(row: pd.Series, base: pd.Series | None, task: str, metrics: list[str]) -> dict[str, str]:
    """One task's columns for one run: each metric ± se with its paired difference from `base`, then
    the judge's win rate against the base model's replies and the reply length, when judged."""
    out = {}
    for metric in metrics:
        name = f"{task}/{metric}"
        out[name] = fmt(value(row, f"metrics.{name}"), value(row, f"metrics.{name}_stderr"))
        pair = None if base is None or base["run_id"] == row["run_id"] else compare_runs(
            row["run_id"], base["run_id"], task, metric)
        out[f"{name} vs base"] = "-" if pair is None else f"{pair.diff:+.3f} [{pair.ci_low:+.3f}, {pair.ci_high:+.3f}]"
    win, low, high = (value(row, f"metrics.{task}/{WIN_RATE}{s}") for s in ("", "_ci_low", "_ci_high"))
    out[f"{task}/{WIN_RATE} vs base"] = "-" if win is None else f"{win:.2f} [{low:.2f}, {high:.2f}]"
    tokens = value(row, f"metrics.{task}/{REPLY_TOKENS}")
    out[f"{task}/{REPLY_TOKENS}"] = "-" if tokens is None else f"{tokens:.1f}"
    return out


def instruction_data_table(done: pd.DataFrame) -> pd.DataFrame | None:
    """The base model, then each source and size: every task's scores side by side."""
    runs = trained(done)
    if len({(src, n) for src, n, _ in runs}) < 2:
        return None
    by_task = scores([r for _, _, r in runs])
    refs = {task: references(done, f"{task}/{metrics[0]}") for task, metrics in by_task.items()}  # (read once)
    rows = []
    base = next((b for task in by_task if (b := base_run(refs[task], runs[0][2])) is not None), None)
    if base is not None:
        row = {"source": BASE, "training instructions": 0, "run": base.get(tag_column(RUN_NAME)),
               "eval.limit": limit(base)}
        for task, metrics in by_task.items():
            row |= cells(base, base, task, metrics)
        rows.append(row)
    for src, n, r in runs:
        row = {"source": src, "training instructions": n, "run": r.get(tag_column(RUN_NAME)),
               "eval.limit": limit(r)}
        for task, metrics in by_task.items():
            row |= cells(r, base_run(refs[task], r), task, metrics)
        rows.append(row)
    table = pd.DataFrame(rows)
    judged = [c for c in table.columns if c.endswith((f"/{WIN_RATE} vs base", f"/{REPLY_TOKENS}"))]
    constant = ["eval.limit"] if table["eval.limit"].nunique() == 1 else []  # (a column for runs of several sweeps)
    return table.drop(columns=[c for c in judged if (table[c] == "-").all()] + constant)


def instruction_data_figures(done: pd.DataFrame) -> dict[str, bytes]:
    """Each score (and the win rate, when judged) against the number of training instructions, one
    line per source; the baselines as a band (the win rate's base model: a tie with itself)."""
    runs = trained(done)
    figs = {}
    for task, metrics in scores([r for _, _, r in runs]).items():
        for metric in [*metrics, WIN_RATE]:
            name = f"{task}/{metric}"
            points: dict[str, list] = {}
            for src, n, r in runs:
                if (y := value(r, f"metrics.{name}")) is not None:
                    points.setdefault(src, []).append((n, y))
            if len({(src, x) for src, xy in points.items() for x, _ in xy}) >= 2:
                band = {BASE: TIE} if metric == WIN_RATE else baseline_values(done, name)
                figs[f"{name} vs training instructions"] = plots.metric_vs(points, band, "training instructions", name)
    return figs


def instruction_data_view(done: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame, str]], dict[str, bytes]]:
    """(tables, figures) of the instruction-data view; empty when the runs do not compare sources or sizes."""
    table = instruction_data_table(done)
    if table is None:
        return [], {}
    caption = ("Instruction tuning on hand-written seed tasks, on tasks the model generated itself "
               "(generate_instructions.py) and on mixes, by number of training instructions. Per task: the "
               "score ± its standard error; its difference with the base model's zero-shot replies, paired per "
               "example, with its 95% bootstrap interval; and, when a reward model judged the replies "
               "(eval.judge_run_id), the win rate against the base model's replies to the same prompts (ties "
               "count half; 95% bootstrap interval over prompts) and the mean reply length in tokens.")
    return [("Instruction data: source and size", table, caption)], instruction_data_figures(done)
