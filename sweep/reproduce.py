"""Re-run a recorded run from what MLflow holds, and compare every metric with the original.

The run's resolved `config.yaml` is what ran, value for value; it is laid over today's defaults
(keys added since then get their defaults) and re-run in process as a new MLflow run tagged
`reproduces=<run id>`. Before any compute the code version (git commit) and the data (sha256 of
every file read) are checked against the run's: a difference is a warning, or with `strict` a
refusal. On the CPU, with the same seed, every metric must come out identical; elsewhere within
`rtol`. Wall-clock and memory figures are shown but not compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.config import PROJECT_ROOT, ConfigError, compose_config
from sweep.data import sha256
from sweep.tracking import STUDY_METHOD, git_state

VOLATILE = ("_seconds", "_per_second", "peak_rss_mb", "peak_gpu_mb")  # timings and memory: not compared


@dataclass
class Check:
    ok: bool
    message: str


def find_trial_run(study: str, trial: int | None) -> str:
    """The MLflow run of an Optuna trial (default: the study's best finished trial)."""
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`optuna.study_name` = '{study}'")
    if runs.empty:
        raise ConfigError(f"--from-optuna {study}: no MLflow runs of an Optuna study named {study!r} "
                          f"at {mlflow.get_tracking_uri()}")
    parent = runs[runs["tags.method"] == STUDY_METHOD]
    kids = runs[(runs["tags.method"] != STUDY_METHOD) & (runs["status"] == "FINISHED")]
    if trial is not None:
        match = kids[kids["tags.optuna.trial_number"] == str(trial)]
        if match.empty:
            done = ", ".join(sorted(kids["tags.optuna.trial_number"], key=int))
            raise ConfigError(f"--from-optuna {study}:{trial}: no finished trial {trial}; finished: {done or 'none'}")
        return match.iloc[0]["run_id"]
    if parent.empty or kids.empty:
        raise ConfigError(f"--from-optuna {study}: the study has no finished trials to choose from")
    objectives = json.loads(parent.iloc[0]["params.objectives"])
    directions = json.loads(parent.iloc[0]["params.directions"])
    if len(objectives) > 1:
        raise ConfigError(f"--from-optuna {study}: the study has {len(objectives)} objectives, so no single best "
                          f"trial; name one as {study}:TRIAL (its Pareto front is in the parent run)")
    values = kids[f"metrics.{objectives[0]}"]
    best = values.idxmax() if directions[0] == "maximize" else values.idxmin()
    return kids.loc[best, "run_id"]


def recorded_config(run_id: str) -> tuple[DictConfig, str]:
    """The run's resolved config laid over today's defaults, its paths moved to this checkout;
    and the project root it ran in."""
    stored = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
    defaults = compose_config()
    OmegaConf.set_struct(defaults, False)
    cfg = OmegaConf.merge(defaults, stored)
    cfg.trial = defaults.trial  # a reproduction is a run of its own, not a trial of the study it came from
    old_root = str(stored.get("paths", {}).get("root", PROJECT_ROOT))
    for key in ("root", "data", "tasks", "cache"):
        cfg.paths[key] = str(moved(str(cfg.paths[key]), old_root))
    return cfg, old_root


def moved(path: str, old_root: str) -> Path:
    """`path` in this checkout when it lay under the run's project root, else unchanged."""
    return Path(str(PROJECT_ROOT) + path[len(old_root):]) if path.startswith(old_root) else Path(path)


def check_inputs(run, old_root: str) -> list[Check]:
    """The code version and the data files against the run's."""
    checks = []
    commit, dirty = git_state()
    recorded = run.data.tags.get("git_commit", "unknown")
    if recorded != commit:
        checks.append(Check(False, f"code: the run was at commit {recorded[:12]}, this checkout is at {commit[:12]}; "
                                   f"`git checkout {recorded[:12]}` to run the same code"))
    elif dirty:
        checks.append(Check(False, f"code: commit {commit[:12]} as recorded, but the working tree has uncommitted "
                                   f"changes"))
    else:
        checks.append(Check(True, f"code: commit {commit[:12]}, as recorded"))
    hashes = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data_sha256.json")
    for path, digest in sorted(hashes.items()):
        here = moved(path, old_root)
        if not here.is_file():
            checks.append(Check(False, f"data: {here} is missing (the run read {path})"))
        elif (now := sha256(here)) != digest:
            checks.append(Check(False, f"data: {here} changed since the run (sha256 {digest[:12]} -> {now[:12]})"))
        else:
            checks.append(Check(True, f"data: {here} unchanged"))
    return checks


def metric_values(run_id: str) -> dict[str, float]:
    """Every metric of a run: final values, and each step of the curves as `name@step`."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    out = dict(run.data.metrics)
    for name in run.data.metrics:
        history = client.get_metric_history(run_id, name)
        if len(history) > 1:
            out |= {f"{name}@{h.step}": h.value for h in history}
    return out


def compare(original: dict[str, float], new: dict[str, float], rtol: float) -> list[tuple[str, float, float, str]]:
    """(metric, original, reproduced, verdict) for every metric of either run."""
    rows = []
    for name in sorted(set(original) | set(new)):
        a, b = original.get(name, math.nan), new.get(name, math.nan)
        if any(v in name for v in VOLATILE):
            verdict = "not compared"
        elif name not in original or name not in new:
            verdict = "MISSING"
        elif a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=0.0):
            verdict = "same" if a == b else "within rtol"
        else:
            verdict = "DIFFERENT"
        rows.append((name, a, b, verdict))
    return rows


def format_comparison(rows) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [f"{'metric':<{width}}  {'original':>14}  {'reproduced':>14}  verdict"]
    lines += [f"{n:<{width}}  {a:>14.8g}  {b:>14.8g}  {v}" for n, a, b, v in rows]
    return "\n".join(lines)


def reproduce(run_id: str, strict: bool, rtol: float | None, log=print) -> int:
    """Check, re-run and compare; the exit status (0 same, 1 different, 2 refused)."""
    import torch

    from sweep.job import run_job

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        raise ConfigError(f"run {run_id} is {run.info.status}: only a finished run has metrics to compare")
    cfg, old_root = recorded_config(run_id)
    checks = check_inputs(run, old_root)
    for c in checks:
        log(("  ok    " if c.ok else "  WARN  ") + c.message)
    if strict and not all(c.ok for c in checks):
        log("refused (--strict): the code or the data differ from the run's (see WARN above)")
        return 2

    experiment = client.get_experiment(run.info.experiment_id).name
    with open_dict(cfg):
        cfg.tracking.uri = mlflow.get_tracking_uri()
        cfg.tracking.experiment = experiment
        cfg.tracking.sweep_id = f"reproduce-{run_id[:8]}"
        cfg.tracking.run_name = run.data.tags.get("mlflow.runName")
        cfg.tracking.tags = {"reproduces": run_id}
    log(f"re-running {run.data.tags.get('mlflow.runName')} ({run_id}) with seed {cfg.seed}")
    outcome = run_job(cfg)
    if outcome.status != "FINISHED":
        log(f"the re-run did not finish: {outcome.status} {outcome.error or ''}")
        return 1
    if rtol is None:
        rtol = 0.0 if not torch.cuda.is_available() else 1e-3
    rows = compare(metric_values(run_id), metric_values(outcome.run_id), rtol)
    log(format_comparison(rows))
    same = not any(v in ("DIFFERENT", "MISSING") for *_, v in rows)
    client.set_tag(outcome.run_id, "reproduce_match", str(same).lower())
    client.log_dict(outcome.run_id, {"reproduces": run_id, "rtol": rtol, "checks": [c.__dict__ for c in checks],
                                     "metrics": [dict(zip(("metric", "original", "reproduced", "verdict"), r))
                                                 for r in rows]}, "reproduce_comparison.json")
    log(f"{'identical' if same else 'DIFFERENT'}: run {outcome.run_id} reproduces {run_id} "
        f"({sum(v in ('same', 'within rtol') for *_, v in rows)} metrics compared, rtol={rtol:g})")
    return 0 if same else 1
