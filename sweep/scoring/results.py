"""What a scoring pass leaves: each example's prediction (calibrated where asked), the draws of
demonstrations combined into one result, and the flat `<task>/<metric>` names a run logs."""

from __future__ import annotations

import statistics
from collections import Counter

from sweep.scoring import calibration
from sweep.tracking import system_metrics

# A run's costs (analysis/cost.py): its training's FLOPs, and a query's prompt tokens (demonstrations included) and
# measured seconds per 1,000 queries in its test pass.
TRAIN_FLOPS, QUERY_TOKENS, QUERY_SECONDS = "train_flops", "query_prompt_tokens", "query_seconds_per_1k"
LEAKAGE_PREFIX = "leakage/"  # the leakage audit's counts (leakage/<task>/flagged): about the data, not a score
# per-step, per-draw and machine series, and the audit's counts; their names hold a "/" too
CURVES = ("train/", "slice/", "draw/", system_metrics.PREFIX, LEAKAGE_PREFIX)


def is_task_metric(name: str) -> bool:
    """`<task>/<metric>` as the scores of a run are logged (e.g. sst2/acc), not a curve."""
    return "/" in name and not name.startswith(CURVES)


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """`metrics` renamed with `prefix` (dev/sst2/acc: a development score)."""
    return {prefix + k: v for k, v in metrics.items()}


def by_task_name(results: dict, tasks: dict) -> dict:
    """lm-eval's output keyed by our task names instead of the template variants' names."""
    rename = {task.config.task: name for name, task in tasks.items()}
    out = dict(results)
    for key in ("results", "samples", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        if isinstance(results.get(key), dict):
            out[key] = {rename.get(k, k): v for k, v in results[key].items()}
    for name, values in out["results"].items():
        out["results"][name] = {**values, "alias": name}
    return out


def record_predictions(results: dict, name: str, p_cf: list[float] | None) -> None:
    """Per example: the predicted choice (calibrated when `p_cf` is given, then `acc` is the
    calibrated accuracy and `acc_uncalibrated` lm-eval's); per task: the share of the most
    predicted choice (`top_prediction_share`: near 1, the prompt makes the model answer one label)."""
    from lm_eval.api.metrics import mean_stderr

    samples, values = results["samples"][name], results["results"][name]
    for s in samples:
        logliks = [r[0] for r in s["filtered_resps"]]
        s["prediction"] = max(range(len(logliks)), key=logliks.__getitem__)
    values["top_prediction_share,none"] = top_share(samples)
    if p_cf is None:
        return
    for s in samples:
        s["acc_uncalibrated"], s["prediction_uncalibrated"] = s["acc"], s["prediction"]
        s["prediction"] = calibration.calibrated_prediction([r[0] for r in s["filtered_resps"]], p_cf)
        s["acc"] = float(s["prediction"] == s["target"])
    accs = [s["acc"] for s in samples]
    values["acc_uncalibrated,none"], values["acc,none"] = values["acc,none"], statistics.fmean(accs)
    values["acc_stderr,none"] = mean_stderr(accs) if len(accs) > 1 else float("nan")
    values["top_prediction_share_uncalibrated,none"] = values["top_prediction_share,none"]
    values["top_prediction_share,none"] = top_share(samples)
    values["content_free_probs"] = p_cf


def top_share(samples: list[dict]) -> float:
    """The share of the examples given the most frequent prediction."""
    return Counter(s["prediction"] for s in samples).most_common(1)[0][1] / len(samples)


def combine_draws(draws: list[dict], keep_samples: bool) -> dict:
    """One results dict for all draws: each metric the mean over draws, its stderr from the
    per-example means, its spread over draws as `<metric>_draw_sd`; per-example scores averaged
    (so paired tests still pair example by example). The draws stay under `draws`."""
    first = draws[0]["results"]
    combined = dict(first)
    combined["draws"] = [{"seed": d["seed"], "demonstrations": d["demonstrations"],
                          "results": d["results"]["results"]} for d in draws]
    if len(draws) > 1:
        combined["results"] = {name: _combine_task(name, draws) for name in first["results"]}
        combined["samples"] = {name: _combine_samples(name, draws) for name in first.get("samples", {})}
    if not keep_samples:
        combined.pop("samples", None)
    return combined


def _metric_keys(values: dict) -> list[str]:
    return [k for k, v in values.items() if "," in k and "_stderr" not in k and k.split(",")[0] != "sample_len"
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _combine_task(name: str, draws: list[dict]) -> dict:
    from lm_eval.api.metrics import mean_stderr

    per_draw = [d["results"]["results"][name] for d in draws]
    samples = _combine_samples(name, draws)
    out = {k: v for k, v in per_draw[0].items() if k not in _metric_keys(per_draw[0])}
    for key in _metric_keys(per_draw[0]):
        metric, _, filt = key.partition(",")
        values = [v[key] for v in per_draw]
        out[key] = statistics.fmean(values)
        out[f"{metric}_draw_sd,{filt}"] = statistics.stdev(values)
        per_example = [s[metric] for s in samples if metric in s]
        if len(per_example) > 1:
            out[f"{metric}_stderr,{filt}"] = mean_stderr(per_example)
    out.pop("content_free_probs", None)
    return out


def _combine_samples(name: str, draws: list[dict]) -> list[dict]:
    runs = [d["results"].get("samples", {}).get(name, []) for d in draws]
    combined = []
    for records in zip(*runs):
        s = dict(records[0])
        for metric in [m for m in records[0].get("metrics", []) if m in records[0]] + ["acc_uncalibrated"]:
            if metric in s:
                s[f"{metric}_by_draw"] = [r[metric] for r in records]
                s[metric] = statistics.fmean(s[f"{metric}_by_draw"])
        for key in ("prediction", "prediction_uncalibrated"):
            if key in s:
                s[f"{key}_by_draw"] = [r[key] for r in records]
        combined.append(s)
    return combined


def flatten_metrics(results: dict) -> dict[str, float]:
    """{'sst2': {'acc,none': .9, 'acc_stderr,none': .01}} -> {'sst2/acc': .9, 'sst2/acc_stderr': .01}."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or metric == "alias":
                continue
            if metric == "sample_len":
                metric = "n_samples"
            name = metric if filt in ("none", "") else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(value)
    return flat
