"""The report's RLHF pipeline view: each stage's run and lineage, the reward model's accuracy, the
policies' win rates against their reference, reward and length distributions, sample replies.

Reads what the stages logged (tags `stage`, `parent_run_id`, `judge_run_id`; the tables
`reward_scores.json` and `judged_replies.json`). A shared store is untrusted: those tables are read
as data and shown escaped, never executed.
"""

from __future__ import annotations

import functools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.plots import _png  # noqa: E402
from sweep.vocabulary import JUDGE_TAG, PARENT_TAG, RUN_NAME, STAGE, TASKS, tag_column

STAGE_ORDER = ("sft", "reward", "dpo", "grpo", "rloo", "ppo")
SETTINGS = {"dpo": ("beta", "loss_type"), "grpo": ("beta", "epsilon", "num_generations"),
            "rloo": ("beta", "epsilon", "num_generations"), "ppo": ("kl_coef", "cliprange", "vf_coef")}
SAMPLE_PROMPTS = 3     # prompts shown with every stage's reply
SHOWN_REPLY_CHARS = 300


def _value(row, col):
    value = row.get(col)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _ci(row, metric: str) -> str:
    value, low, high = (_value(row, f"metrics.{metric}{s}") for s in ("", "_ci_low", "_ci_high"))
    if value is None:
        return "-"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]" if low is not None and high is not None else f"{value:.3f}"


def _num(row, metric: str, digits: int = 3) -> str:
    value = _value(row, f"metrics.{metric}")
    return "-" if value is None else f"{value:.{digits}f}"


def stage_runs(done: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of a pipeline (tag `stage`), in pipeline order; empty when the runs hold no
    stage but SFT."""
    if tag_column(STAGE) not in done or not (done[tag_column(STAGE)].fillna("sft") != "sft").any():
        return done.iloc[0:0]
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    runs = done.assign(_order=done[tag_column(STAGE)].fillna("sft").map(order).fillna(len(order)))
    return runs.sort_values(["_order", "start_time"]).drop(columns="_order")


def lineage_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Stage, run, what it started from and was judged by, its settings, time and throughput."""
    names = dict(zip(runs["run_id"], runs[tag_column(RUN_NAME)]))
    rows = []
    for _, r in runs.iterrows():
        stage = _value(r, tag_column(STAGE)) or "sft"
        parent, judge = _value(r, tag_column(PARENT_TAG)), _value(r, tag_column(JUDGE_TAG))
        settings = ", ".join(f"{k}={r.get(f'params.stage.{k}')}" for k in SETTINGS.get(stage, ()))
        rows.append({
            "stage": stage, "run": _value(r, tag_column(RUN_NAME)), "run id": r["run_id"][:8],
            "starts from": f"{names.get(parent, '?')} ({parent[:8]})" if parent else "base model",
            "judged by": f"{names.get(judge, '?')} ({judge[:8]})" if judge else "-",
            "settings": settings or "-", "train s": _num(r, "train_seconds", 0),
            "train tokens/s": _num(r, "train_tokens_per_second", 0),
            "rollout tokens/s": _num(r, "rollout_tokens_per_second", 1),
        })
    return pd.DataFrame(rows)


def scores_table(runs: pd.DataFrame, task: str) -> pd.DataFrame:
    """The reward model's pairwise accuracy; each policy's reward, win rate against its reference
    (95% bootstrap interval over prompts), KL to it and reply length."""
    rows = []
    for _, r in runs.iterrows():
        stage = _value(r, tag_column(STAGE)) or "sft"
        if stage == "reward":
            rows.append({"stage": stage, "run": _value(r, tag_column(RUN_NAME)),
                         "pairwise accuracy [95% CI]": _ci(r, f"{task}/pairwise_accuracy"),
                         "margin [95% CI]": _ci(r, f"{task}/margin")})
        else:
            rows.append({"stage": stage, "run": _value(r, tag_column(RUN_NAME)),
                         "reward": _num(r, f"{task}/reward"), "reference reward": _num(r, f"{task}/reward_reference"),
                         "win rate vs reference [95% CI]": _ci(r, f"{task}/win_rate"),
                         "KL to reference": _num(r, f"{task}/kl_to_reference"),
                         "reply tokens": _num(r, f"{task}/reply_tokens", 1),
                         "reference reply tokens": _num(r, f"{task}/reply_tokens_reference", 1)})
    return pd.DataFrame(rows).fillna("")


@functools.cache
def logged_table(run_id: str, name: str) -> pd.DataFrame:
    """An MLflow table a run logged (empty when it has none)."""
    try:
        table = mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")
        return pd.DataFrame(table["data"], columns=table["columns"])
    except Exception:  # noqa: BLE001  (a run without the table, or an unreadable one: nothing to show)
        return pd.DataFrame()


def judged(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{run name: its judged replies} for the policy runs that were judged."""
    out = {}
    for _, r in runs.iterrows():
        table = logged_table(r["run_id"], "judged_replies.json")
        if not table.empty and {"reward", "reply_tokens"} <= set(table.columns):
            out[f"{_value(r, tag_column(STAGE)) or 'sft'}: {_value(r, tag_column(RUN_NAME))}"] = table
    return out


def samples_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The first prompts with the reference's reply and each stage's, with their rewards."""
    if not tables:
        return None
    first = next(iter(tables.values()))
    rows = []
    for i in range(min(SAMPLE_PROMPTS, len(first))):
        row = {"prompt (end)": str(first["prompt"].iloc[i])[-SHOWN_REPLY_CHARS:]}
        if "reference_reply" in first:
            row["reference"] = f"{str(first['reference_reply'].iloc[i])[:SHOWN_REPLY_CHARS]} " \
                               f"(reward {float(first['reference_reward'].iloc[i]):.2f})"
        for name, table in tables.items():
            if i < len(table):
                reply, reward = str(table["reply"].iloc[i])[:SHOWN_REPLY_CHARS], float(table["reward"].iloc[i])
                row[name] = f"{reply} (reward {reward:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def distributions(tables: dict[str, pd.DataFrame], column: str, label: str) -> bytes:
    """Box plots of `column` per stage (with the reference's, once)."""
    data, names = [], []
    first = next(iter(tables.values()))
    if f"reference_{column}" in first:
        data.append(pd.to_numeric(first[f"reference_{column}"], errors="coerce").dropna())
        names.append("reference")
    for name, table in tables.items():
        data.append(pd.to_numeric(table[column], errors="coerce").dropna())
        names.append(name.split(":")[0])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel=label, title=f"{label} of the held-out prompts' replies, by stage")
    return _png(fig)


def reward_model_figure(runs: pd.DataFrame) -> dict[str, bytes]:
    """The reward model's histogram of chosen and rejected rewards (the plot its run logged, drawn again
    from its table by the same code)."""
    from sweep.stages.preference import PairScores, distribution_figure

    figs = {}
    for _, r in runs[runs[tag_column(STAGE)] == "reward"].iterrows():
        table = logged_table(r["run_id"], "reward_scores.json")
        if table.empty:
            continue
        scores = PairScores(*(pd.to_numeric(table[c], errors="coerce").dropna().tolist()
                              for c in ("reward_chosen", "reward_rejected")))
        figs[f"Reward model {r['run_id'][:8]}: rewards of chosen and rejected replies"] = _png(
            distribution_figure(scores, f"reward model {_value(r, tag_column(RUN_NAME))}"))
    return figs


def pipeline_view(done: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame, str]], dict[str, bytes]]:
    """(tables, figures) of the pipeline view; empty when the runs are not a pipeline."""
    runs = stage_runs(done)
    if runs.empty:
        return [], {}
    task = next((t for t in runs[tag_column(TASKS)].dropna().iloc[0].split(",")), "hh_rlhf")
    tables = [
        ("RLHF pipeline: stages and lineage", lineage_table(runs),
         "Each stage's run, the run it started from (init.run_id: its adapter is loaded, trained on and kept "
         "frozen as the reference) and the reward model that judged it (eval.judge_run_id)."),
        (f"RLHF pipeline: {task} scores", scores_table(runs, task),
         "Reward model: pairwise accuracy on held-out pairs (chance 0.5), with a 95% paired-bootstrap interval. "
         "Policies: mean reward of their replies to the held-out prompts, win rate against the reference policy's "
         "replies to the same prompts (ties count half; 95% bootstrap interval over prompts), KL to the reference "
         "on the policy's own replies, and reply length: a reward gained by length alone is reward hacking."),
    ]
    replies = judged(runs)
    figs = reward_model_figure(runs)
    if replies:
        figs |= {"Reward by stage": distributions(replies, "reward", "reward"),
                 "Reply length by stage": distributions(replies, "reply_tokens", "reply tokens")}
        tables.append(("RLHF pipeline: sample replies", samples_table(replies),
                       "The first held-out prompts, the reference policy's reply and each stage's, with the reward "
                       "model's score (the whole tables: judged_replies.json of each run)."))
    return tables, figs
