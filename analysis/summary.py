"""The end-of-sweep comparison table: each run of a sweep beside the prompt-only and in-context
baselines of the same model and task: the strongest baseline (chosen on a development slice,
method=strongest_baseline), the zero-shot baseline with the run's own template, and the spread of
every baseline variant scored on the same examples. A baseline that gives one answer to more
than 90% of the examples is flagged as degenerate.

`python -m analysis.summary --experiment NAME [--sweep-id ID] [--tracking-uri URI]`
"""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass, field, replace

import mlflow
import numpy as np
import pandas as pd

from analysis import verdict
from analysis.panel import panel_test_scores
from analysis.runs import (
    BASELINES,
    STRONGEST,
    best_by_dev,
    confirmations,
    is_adapter,
    latest_sweep_id,
    searched_among,
    sweep_runs,
    tag,
    template,
    value,
)
from analysis.sequential import DEFAULT_BLOCK
from analysis.stats import examples_available, samples
from sweep.data.splits import DEV_PREFIX
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.secrets import guard_output, redact
from sweep.tracking.checks import is_server
from sweep.tracking.store import runs_page
from sweep.tracking.untrusted import Unquotable, printable
from sweep.vocabulary import (
    BASELINE_TEMPLATE,
    CONFIRMS,
    DEFERRED,
    METHOD,
    MODEL,
    RUN_NAME,
    STAGE,
    TASKS,
    TEST_PASS,
    tag_column,
)

DEGENERATE_SHARE = 0.9  # a baseline giving one answer to more examples than this is degenerate


@dataclass
class References:
    """The baselines a run on one task is compared with (one model, one eval.limit)."""
    strongest: pd.Series | None = None                                  # the latest strongest_baseline run
    zero_shot: dict[str, pd.Series] = field(default_factory=dict)       # template -> latest zero-shot run
    variants: dict[str, float] = field(default_factory=dict)            # every baseline run: name -> value

    def band(self) -> tuple[float, float] | None:
        return (min(self.variants.values()), max(self.variants.values())) if self.variants else None


def references(runs: pd.DataFrame, metric: str) -> dict[tuple, References]:
    """(model, eval.limit) -> the baselines of finished runs scored on `metric` (later runs win)."""
    out: dict[tuple, References] = {}
    for _, r in runs[runs[tag_column(METHOD)].isin(BASELINES) & (runs["status"] == "FINISHED")].iterrows():
        v = value(r, f"metrics.{metric}")
        if v is None:
            continue
        refs = out.setdefault(group_key(r), References())
        refs.variants[r.get(tag_column(RUN_NAME))] = v
        if r[tag_column(METHOD)] == STRONGEST:
            refs.strongest = r
        elif r[tag_column(METHOD)] == "zero_shot":
            refs.zero_shot[template(r)] = r
    return out


def baseline_values(done: pd.DataFrame, metric: str) -> dict[str, float]:
    """Every baseline variant's value (the band) of the first model/limit group."""
    groups = references(done, metric)
    return next(iter(groups.values())).variants if groups else {}


POOL, SIZE = "params.eval.fewshot_pool", "params.data.max_train_samples"  # a run's labelled pool, and its size


def group_key(row) -> tuple:
    """Runs compared with each other: one model, one eval.limit, and with eval.fewshot_pool=trained one
    labelled pool (the data.max_train_samples examples of one seed: a crossover's sizes apart)."""
    pool = (row.get(SIZE), row.get("params.seed")) if row.get(POOL) == "trained" else None
    return row.get(tag_column(MODEL)), row.get("params.eval.limit"), pool


def degenerate(row, metric: str) -> str:
    """'degenerate: 95% one answer' when the run gave one answer to more than 90% of the examples."""
    share = value(row, f"metrics.{metric.split('/')[0]}/top_prediction_share")
    return f"degenerate: {share:.0%} one answer" if share is not None and share > DEGENERATE_SHARE else ""


def shots(row) -> str:
    """k: the chosen one for a strongest baseline."""
    if row.get(tag_column(METHOD)) == STRONGEST:
        return tag(row, "baseline.num_fewshot")
    return row.get("params.method.num_fewshot")


HEADLINE = ("acc", "win_rate", "pairwise_accuracy", "rougeL")  # a task's headline metric: the first it has


def main_metrics(runs: pd.DataFrame, prefix: str = "") -> list[str]:
    """One headline metric per scored task: the first of HEADLINE it has (accuracy; a policy's win rate
    against its reference; a reward model's pairwise accuracy), else its first metric. `prefix`:
    among the metrics named so (DEV_PREFIX: the tasks scored on development examples, as a sweep
    whose test pass is deferred has them), named without it."""
    tasks = {t for tags in runs[tag_column(TASKS)].dropna() for t in tags.split(",")}
    by_task: dict[str, list[str]] = {}
    for col in runs.columns:
        if col.startswith("metrics." + prefix) and col.count("/") > prefix.count("/") and not col.endswith(
                ("_stderr", "_ci_low", "_ci_high")):
            task, metric = col[len("metrics." + prefix):].split("/", 1)
            if task in tasks and metric != "n_samples":
                by_task.setdefault(task, []).append(metric)
    return [f"{t}/{next((h for h in HEADLINE if h in ms), sorted(ms)[0])}" for t, ms in sorted(by_task.items())]


def fmt(value, stderr=None) -> str:
    """'0.863 ± 0.017', '0.863', or '-' for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if stderr is None or (isinstance(stderr, float) and math.isnan(stderr)):
        return f"{value:.3f}"
    return f"{value:.3f} ± {stderr:.3f}"


def diff(row, ref: pd.Series | None, metric: str) -> str:
    a, b = value(row, f"metrics.{metric}"), value(ref, f"metrics.{metric}") if ref is not None else None
    return "-" if a is None or b is None or row["run_id"] == ref["run_id"] else f"{a - b:+.3f}"


def by_development_score(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with the sweep's choice first (then its confirming seeds), then by development score
    (the first task's headline metric), best first, runs without one last: nothing is ordered by a
    test score."""
    metrics = main_metrics(runs)
    if not metrics or runs.empty:
        return runs
    chosen = best_by_dev(runs, metrics[0])
    chosen_id = chosen["run_id"] if chosen is not None else None
    key = runs.apply(lambda r: (0 if r["run_id"] == chosen_id else 1 if r.get(f"tags.{CONFIRMS}") == chosen_id else 2,
                                -(value(r, f"metrics.{DEV_PREFIX}{metrics[0]}") or -math.inf)), axis=1)
    return runs.loc[sorted(runs.index, key=key.__getitem__)].reset_index(drop=True)


def comparison_table(runs: pd.DataFrame, comparisons: list[verdict.Comparison] = ()) -> pd.DataFrame:
    runs = by_development_score(runs)
    metrics, rows = main_metrics(runs), []
    refs = {m: references(runs, m) for m in metrics}
    dev = {m for m in metrics if f"metrics.{DEV_PREFIX}{m}" in runs}
    verdicts = {(c.run_id, c.metric): c for c in comparisons}
    stage = tag_column(STAGE)
    staged = stage in runs and (runs[stage].fillna("sft") != "sft").any()  # (an RLHF pipeline's runs)
    for _, r in runs.iterrows():
        method = r.get(tag_column(METHOD))
        row = {
            "run": r.get(tag_column(RUN_NAME)),
            **({"stage": r.get(tag_column(STAGE)) or "sft"} if staged else {}),
            "method": method,
            "template": template(r) if method != STRONGEST else tag(r, BASELINE_TEMPLATE),
            "r": r.get("params.lora.r") if r.get("params.method.peft") == "lora" else "-",
            "k": shots(r),
        }
        notes = []
        for m in metrics:
            if m in dev:
                row[f"{DEV_PREFIX}{m}"] = fmt(value(r, f"metrics.{DEV_PREFIX}{m}"))
            row[m] = fmt(value(r, f"metrics.{m}"), value(r, f"metrics.{m}_stderr"))
            ref = refs[m].get(group_key(r), References())
            suffix = "" if len(metrics) == 1 else f" ({m})"
            row[f"vs strongest{suffix}"] = diff(r, ref.strongest, m)
            zero_shot = ref.zero_shot.get(template(r))
            row[f"vs zero-shot{suffix}"] = diff(r, zero_shot, m) if method not in BASELINES else "-"
            if comparisons:
                seed = isinstance(r.get(f"tags.{CONFIRMS}"), str)  # (a confirming seed: part of the primary claim)
                row[f"verdict{suffix}"] = "(its seed)" if seed else short_verdict(verdicts.get((r["run_id"], m)))
            notes.append(degenerate(r, m))
        trainable = value(r, "metrics.trainable_params")
        row["trainable params"] = f"{int(trainable):,}" if trainable is not None else "-"
        secs = value(r, "metrics.train_seconds")
        row["train s"] = f"{secs:.0f}" if secs is not None else "-"
        row["status"] = r.get("status")
        row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    return pd.DataFrame(rows)


def band_lines(runs: pd.DataFrame) -> list[str]:
    """One line per metric and model/limit: the spread of the baseline variants, the strongest."""
    lines = []
    for m in main_metrics(runs):
        for refs in references(runs, m).values():
            lo, hi = refs.band()
            line = f"{m}: {len(refs.variants)} baseline variant(s) span {lo:.3f} to {hi:.3f}"
            if refs.strongest is not None:
                line += (f"; the strongest, chosen on a development slice, is {refs.strongest[tag_column(RUN_NAME)]} "
                         f"({value(refs.strongest, f'metrics.{m}'):.3f})")
            else:
                line += "; no strongest baseline yet (python sweep.py method=strongest_baseline)"
            lines.append(line)
    return lines


def short_verdict(c: verdict.Comparison | None) -> str:
    if c is None:
        return "-"
    return f"{c.verdict} ({c.role})" if c.role == verdict.PRIMARY else c.verdict




def margin_of(row) -> float:
    return value(row, "params.eval.margin") if value(row, "params.eval.margin") is not None else verdict.DEFAULT_MARGIN


def sweep_verdicts(runs: pd.DataFrame) -> list[verdict.Comparison]:
    """Per task's headline metric: the primary comparison (the adapter the development scores choose,
    with its confirming seeds, against the strongest baseline), one per task and corrected across
    tasks; then every other adapter, secondary, corrected among themselves (analysis/verdict.py)."""
    primary, secondary = [], []
    for m in main_metrics(runs):
        task, name = m.split("/", 1)
        refs = references(runs, m)
        chosen = best_by_dev(runs, m)
        for _, r in runs.iterrows():
            strongest = refs.get(group_key(r), References()).strongest
            if not is_adapter(r) or strongest is None or value(r, f"metrics.{m}") is None:
                continue
            is_chosen = chosen is not None and r["run_id"] == chosen["run_id"]
            seeds = [r, *confirmations(runs, r["run_id"])] if is_chosen else [r]
            c = verdict.compare(r["run_id"], r.get(tag_column(RUN_NAME)), m, strongest.get(tag_column(RUN_NAME)),
                                [samples(s["run_id"], task, name) for s in seeds],
                                samples(strongest["run_id"], task, name), margin_of(r),
                                examples_available(strongest["run_id"], task))
            if c is not None:
                c = replace(c, searched=searched_among(strongest))
                (primary if is_chosen else secondary).append(c)
    by_id = {r["run_id"]: r for _, r in runs.iterrows()}
    primary = [sequentially(c, by_id[c.run_id]) for c in verdict.corrected(primary, verdict.PRIMARY)]
    return primary + verdict.corrected(secondary, verdict.SECONDARY)


def sequentially(c: verdict.Comparison, run) -> verdict.Comparison:
    """The primary comparison read in blocks when its run was configured so (eval.sequential=true,
    blocks of eval.sequential_block, in the order its seed fixes over the examples a test pass
    scores: the first eval.limit): set before any test score existed."""
    if str(run.get("params.eval.sequential")).lower() != "true":
        return c
    block, seed, limit = (value(run, f"params.{k}") for k in ("eval.sequential_block", "seed", "eval.limit"))
    bounds = [n for n in (c.available, limit) if n]
    pool = min(bounds) if bounds else c.n
    return c.read_sequentially(int(block) if block and block >= 1 else DEFAULT_BLOCK, int(seed or 0), int(pool))


def measured_on_test(runs: pd.DataFrame, metric: str) -> dict[str, float]:
    """Peeking, for comparison only: every baseline variant measured on the test examples themselves
    (the baseline runs, and the strongest baseline's panel as far as its oracle scored it)."""
    measured = {}
    for refs in references(runs, metric).values():
        measured |= refs.variants
        panel = panel_test_scores(refs.strongest["run_id"], metric) if refs.strongest is not None else {}
        if panel:  # (the strongest run is one of its panel's variants, under its own name there)
            measured.pop(refs.strongest.get(tag_column(RUN_NAME)), None)
        measured |= panel
    return measured


def verdict_lines(runs: pd.DataFrame, comparisons: list[verdict.Comparison], peek: bool = False) -> list[str]:
    """Per task: the primary claim (the configuration the development scores chose, against the
    baseline they chose) with its interval, detectable effect and seeds; then the secondary adapters.
    `peek`: also the best baseline variant measured on the test examples, when the search's oracle
    scored them (labelled as peeking)."""
    lines = []
    for m in main_metrics(runs):
        primary = [c for c in comparisons if c.metric == m and c.role == verdict.PRIMARY]
        secondary = [c for c in comparisons if c.metric == m and c.role == verdict.SECONDARY]
        best = best_by_dev(runs, m)
        for c in primary:
            lines.append(f"Primary claim on {m}: the adapter chosen on development data ({c.run}, {DEV_PREFIX}{m} "
                         f"{value(best, f'metrics.{DEV_PREFIX}{m}'):.3f}) vs the baseline chosen there "
                         f"(level {verdict.percent(c.level)} over {c.family} task{'s' if c.family > 1 else ''}):")
            lines.append(f"  {c.sentence()}")
            score = (f"{np.mean(c.seed_means):.3f} ± {np.std(c.seed_means, ddof=1):.3f} (mean ± sd over {c.seeds} "
                     "training seeds)" if c.seeds > 1 else f"{c.seed_means[0]:.3f}")
            lines.append(f"  test {m}: {score}; {c.claim()}")
        if secondary:
            lines.append(f"Secondary, the other adapters (each at level {verdict.percent(secondary[0].level)}, "
                         f"Bonferroni over {secondary[0].family}; sorted by development score):")
            dev = {r["run_id"]: value(r, f"metrics.{DEV_PREFIX}{m}") or -math.inf for _, r in runs.iterrows()}
            ordered = sorted(secondary, key=lambda c: -dev.get(c.run_id, -math.inf))
            lines += [f"  {c.run}: {c.sentence()}" for c in ordered]
        if peek:
            lines += peeking_line(runs, m)
    return lines


def peeking_line(runs: pd.DataFrame, metric: str) -> list[str]:
    """How far the honestly chosen baseline is from the best variant on the test examples (an oracle),
    when the strongest baseline's search scored its variants there (method.search.oracle)."""
    groups = references(runs, metric)
    strongest = next(iter(groups.values())).strongest if groups else None
    if strongest is None or not panel_test_scores(strongest["run_id"], metric):
        return []
    measured = measured_on_test(runs, metric)
    name, best = max(measured.items(), key=lambda kv: kv[1])
    honest = value(strongest, f"metrics.{metric}")
    return [f"  Peeking (not a result): the best of the {len(measured)} baseline variants measured on the test "
            f"examples themselves is {name} ({best:.3f}); the baseline chosen on development data scored "
            f"{honest:.3f} there ({best - honest:.3f} below that oracle)"]


def deferred_lines(runs: pd.DataFrame, experiment: str, sweep_id: str) -> list[str]:
    """What to run when the sweep's test pass waits (eval.sequential=true) for settle.py."""
    column = tag_column(TEST_PASS)
    waiting = int((runs[column] == DEFERRED).sum()) if column in runs else 0
    if not waiting:
        return []
    return [f"{waiting} run(s) deferred their test pass (eval.sequential=true): python settle.py --experiment "
            f"{shlex.quote(experiment)} --sweep-id {shlex.quote(sweep_id)} scores the chosen adapter's and baseline's "
            "test examples block by block until the verdict is decided"]


def record_verdicts(comparisons: list[verdict.Comparison]) -> None:
    """Each adapter run's verdicts as its tags (`verdict.<task>/<metric>`) and metrics (verdict/...)."""
    client = mlflow.MlflowClient()
    for c in comparisons:
        for key, text in verdict.tags_of(c).items():
            client.set_tag(c.run_id, key, text)
        for key, number in verdict.metrics_of(c).items():
            client.log_metric(c.run_id, key, number)


def summary_text(tracking_uri: str, experiment: str, sweep_id: str | None, record: bool = False,
                 peek: bool = False) -> str:
    """The comparison table of one sweep (None: the experiment's latest); `record`: the verdicts
    also into the adapter runs (the end of a sweep does); `peek`: the oracle's line (see verdict_lines)."""
    mlflow.set_tracking_uri(tracking_uri)
    sweep_id = sweep_id or latest_sweep_id(experiment)
    runs = sweep_runs(experiment, sweep_id)
    if runs.empty:
        return f"No runs recorded for sweep {sweep_id} in experiment {experiment!r}."
    comparisons = sweep_verdicts(runs)
    if record:
        record_verdicts(comparisons)
    table = comparison_table(runs, comparisons).to_string(index=False)
    bands = "\n".join(band_lines(runs) + verdict_lines(runs, comparisons, peek) + deferred_lines(runs, experiment,
                                                                                               sweep_id))
    page = runs_page(tracking_uri, runs.iloc[0]["experiment_id"])
    text = (f"\nSweep {sweep_id} — experiment {experiment!r} ({redact(tracking_uri)})\n{table}\n{bands}\n"
            f"Runs in the MLflow UI{'' if is_server(tracking_uri) else ' (make ui)'}: {page}\n")
    return "\n".join(printable(line) for line in text.split("\n"))  # store text reaches a terminal


def main(argv=None) -> None:

    guard_output()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-id", help="default: the experiment's latest sweep")
    add_tracking_uri(p)
    p.add_argument("--record", action="store_true", help="also record the verdicts as the adapter runs' tags")
    p.add_argument("--peek", action="store_true",
                   help="also show the best baseline variant on the test examples (if the search's oracle scored them)")
    a = p.parse_args(argv)
    try:
        print(summary_text(a.tracking_uri, a.experiment, a.sweep_id, a.record, a.peek))
    except (LookupError, Unquotable) as e:
        raise SystemExit(refuse(e)) from None


if __name__ == "__main__":
    main()


