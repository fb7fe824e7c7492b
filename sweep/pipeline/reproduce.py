"""Re-run a recorded run from what MLflow holds, and compare every metric with the original.

A store may be shared by a team, so what it holds is untrusted input: only the run's
hyperparameters (TAKEN: model choice, method, LoRA, prompt, data, training, scoring, seed) are laid
over today's defaults; paths, include paths, model locations, trust_remote_code and tracking are
this checkout's. A stored value anywhere else that differs from today's is shown and refused unless
named with `--allow`; an interpolation (`${...}`) or a key today's config lacks is refused. The
re-run is a new MLflow run tagged `reproduces=<run id>`. Before any compute the code version (git
commit) and every data file the re-run reads (sha256, against the run's record) are checked: a
difference, or a file the run has no hash for, is a warning, or with `strict` a refusal. On the
CPU, with the same seed, every metric must come out identical; elsewhere within `rtol`.
Wall-clock and memory figures are shown but not compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sweep.config import RUN_ID, ConfigError, compose_config, group_options
from sweep.pipeline.checks import validate
from sweep.runtime.files import sha256
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import redact
from sweep.tracking import system_metrics
from sweep.tracking.lifecycle import git_state
from sweep.tracking.untrusted import equals, printable
from sweep.vocabulary import (
    GIT_COMMIT,
    JUDGE_TAG,
    METHOD,
    PARENT_TAG,
    REPRODUCE_MATCH,
    REPRODUCES,
    RUN_NAME,
    STUDY_METHOD,
    STUDY_NAME,
    TRIAL_NUMBER,
    VERDICT_PREFIX,
    tag_column,
    tag_field,
)

VOLATILE = ("_seconds", "_per_second", "rss_", "peak_gpu_mb")  # timings and memory: not compared


@dataclass
class Check:
    ok: bool
    message: str


def find_trial_run(study: str, trial: int | None) -> str:
    """The MLflow run of an Optuna trial (default: the study's best finished trial)."""
    if not study or "'" in study or "\\" in study:
        raise ConfigError(f"--from-optuna {study!r}: not a study name (no quotes or backslashes); "
                          f"`optuna studies --storage URL` lists them")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string=equals(tag_field(STUDY_NAME), study))
    if runs.empty:
        raise ConfigError(f"--from-optuna {study}: no MLflow runs of an Optuna study named {study!r} "
                          f"at {redact(mlflow.get_tracking_uri())}")
    parent = runs[runs[tag_column(METHOD)] == STUDY_METHOD]
    kids = runs[(runs[tag_column(METHOD)] != STUDY_METHOD) & (runs["status"] == "FINISHED")]
    if trial is not None:
        match = kids[kids[tag_column(TRIAL_NUMBER)] == str(trial)]
        if match.empty:
            done = ", ".join(sorted(map(printable, kids[tag_column(TRIAL_NUMBER)].dropna()),
                                    key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)))
            raise ConfigError(f"--from-optuna {study}:{trial}: no finished trial {trial}; finished: {done or 'none'}")
        return match.iloc[0]["run_id"]
    if parent.empty or kids.empty:
        raise ConfigError(f"--from-optuna {study}: the study has no finished trials to choose from")
    try:  # (what the sweep recorded; a store is untrusted)
        objectives = json.loads(parent.iloc[0]["params.objectives"])
        directions = json.loads(parent.iloc[0]["params.directions"])
        recorded = (isinstance(objectives, list) and objectives and all(isinstance(o, str) for o in objectives)
                    and isinstance(directions, list) and directions[:1] in (["maximize"], ["minimize"]))
    except (ValueError, TypeError, KeyError):
        recorded = False
    if not recorded:
        raise ConfigError(f"--from-optuna {study}: its parent run's objectives and directions are not what a sweep "
                          f"records; name a trial instead ({study}:TRIAL)")
    if len(objectives) > 1:
        raise ConfigError(f"--from-optuna {study}: the study has {len(objectives)} objectives, so no single best "
                          f"trial; name one as {study}:TRIAL (its Pareto front is in the parent run)")
    column = f"metrics.{objectives[0]}"
    values = pd.to_numeric(kids[column], errors="coerce") if column in kids else None
    if values is None or values.isna().all():
        raise ConfigError(f"--from-optuna {study}: no finished trial has a value of {printable(objectives[0])!r}; "
                          f"name a trial instead ({study}:TRIAL)")
    best = values.idxmax() if directions[0] == "maximize" else values.idxmin()
    return kids.loc[best, "run_id"]


# What defines an experiment: taken from the stored run.
TAKEN = ("seed", "method", "stage", "init", "lora", "prompt", "data", "train", "eval", "model.name", "model.dtype",
         "model.attn_implementation")
NOT_TAKEN = ("eval.include_paths",)  # where task YAMLs (and the code they name) are found: never from a store
# Where things are and where results go: always this checkout's, whatever the run had.
LOCAL = ("paths", "tracking", "trial")
CHOSEN = ("model", "method", "stage", "data")  # config groups whose option the stored `name` picks


def location(key: str, value) -> bool:
    """A stored value that names a place on the recording machine, not a hyperparameter: generated
    data given as a file (given as an MLflow run id it is the data's identity, and taken)."""
    return key == "data.generated" and value is not None and not RUN_ID.fullmatch(str(value))


def under(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def leaves(stored, here, prefix: str = "") -> dict:
    """Dotted key -> value of the stored config, descending into a mapping only where today's
    config has a mapping too (so `lora.rank_pattern: {k_proj: 6}` stays one value)."""
    out = {}
    for key, value in stored.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and isinstance(here, dict) and isinstance(here.get(key), dict):
            out |= leaves(value, here[key], dotted + ".")
        else:
            out[dotted] = value
    return out


MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH = 1_000_000, 32  # a recorded config: about 10 kB, 6 levels


def check_yaml_shape(text: str) -> None:
    """Refuse anchors and aliases (a recorded config, written by OmegaConf, has none; a few hundred
    bytes of nested aliases expand to gigabytes) and nesting deeper than MAX_CONFIG_DEPTH, reading
    YAML's event stream, which expands nothing."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError("the run's config.yaml holds YAML anchors or aliases, which a recorded config never "
                              "does; refused")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_CONFIG_DEPTH:
                raise ConfigError(f"the run's config.yaml nests deeper than {MAX_CONFIG_DEPTH} levels; refused")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def stored_config(text: str) -> dict:
    """The run's config.yaml as plain data; refused if it holds an interpolation anywhere (a
    `${oc.env:...}` in a store would read this machine's environment into the new run)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the run's config.yaml is {len(text)} bytes, more than a recorded config ever is "
                          f"({MAX_CONFIG_BYTES}); refused")
    try:
        check_yaml_shape(text)
        stored = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"the run's config.yaml is not valid YAML ({first_line(e)}); refused") from None
    if not isinstance(stored, dict):
        raise ConfigError("the run's config.yaml is not a mapping of config keys; refused")

    def walk(node, key):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise ConfigError(f"the run's config.yaml holds an interpolation at {key} ({node[:60]!r}); a recorded "
                              f"config holds plain values, so this one was not written by the harness: refused")
    walk(stored, "")
    return stored


def group_choices(stored: dict) -> list[str]:
    """`model=NAME` etc. for the groups whose option the run named, each checked against conf/."""
    overrides = []
    for group in CHOSEN:
        name = (stored.get(group) or {}).get("name") if isinstance(stored.get(group), dict) else None
        options = group_options(group)
        if name not in options:
            raise ConfigError(f"the run's {group}.name={name!r} is not an option of conf/{group}/ "
                              f"({', '.join(options)}); refused")
        overrides.append(f"{group}={name}")
    return overrides


def check_allowed(keys) -> None:
    """Each `--allow KEY` must be a key of today's config (a typo would let nothing through, silently)."""
    from sweep.config import close_matches

    if not keys:
        return
    config = OmegaConf.to_container(compose_config([]), resolve=False)
    today = leaves(config, config)
    for key in keys:
        if key not in today and not any(k.startswith(f"{key}.") for k in today):
            raise ConfigError(f"--allow {printable(key)}: no such config key{close_matches(key, list(today))}")


def recorded_config(run_id: str, allow=(), log=print) -> tuple[DictConfig, str]:
    """Today's config with the run's hyperparameters (TAKEN) laid over it; and the data folder the
    run read. Paths, tracking and the trial come from this checkout. Any other stored value that
    differs from today's default (a model location, trust_remote_code, include paths, ...) is
    shown and refused unless named in `allow`. Struct mode stays on: a key today's config does
    not have is refused too."""
    stored = stored_config(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
    cfg = compose_config(group_choices(stored))
    here = OmegaConf.to_container(cfg, resolve=True)
    values = leaves(stored, here)
    today = leaves(here, here)
    differing = {k: v for k, v in values.items()
                 if not under(k, LOCAL) and (not under(k, TAKEN) or under(k, NOT_TAKEN) or location(k, v))
                 and today.get(k, ...) != v}
    refused = sorted(set(differing) - set(allow))
    for key in refused:
        log(f"  REFUSED  {key}: the run has {redact(repr(differing[key]))[:200]}, "
            f"this checkout {redact(repr(today.get(key, '(no such key)')))[:200]}")
    if refused:
        raise ConfigError(f"the run's config sets {', '.join(refused)}, which reproduce.py takes from this checkout, "
                          f"not from a store; pass --allow KEY for each to use the stored value")
    for key, value in values.items():
        if (under(key, TAKEN) and not under(key, NOT_TAKEN) and not location(key, value)) or key in differing:
            if isinstance(OmegaConf.select(cfg, key), DictConfig) != isinstance(value, dict):
                raise ConfigError(f"the run's config has {printable(key)}={printable(repr(value))[:80]}, where today's "
                                  "config has a group of keys (or the other way round); refused")
            try:
                OmegaConf.update(cfg, key, value, merge=False)
            except OmegaConfBaseException as e:
                raise ConfigError(f"the run's config has {key}, which today's config cannot take "
                                  f"({type(e).__name__}); refused") from None
    ran_as_before_its_settings(stored, cfg)
    return cfg, str((stored.get("paths") or {}).get("data", ""))


def ran_as_before_its_settings(stored: dict, cfg: DictConfig) -> None:
    """A run recorded before a setting existed ran as the setting's value that keeps its old
    behaviour, not as today's default: train.attn_implementation (2026-12-08; `auto` now trains with
    eager attention on the CPU) was the model's own attention, so such a run comes out identical again."""
    train = stored.get("train")
    if isinstance(train, dict) and "attn_implementation" not in train:
        OmegaConf.update(cfg, "train.attn_implementation", cfg.model.attn_implementation or "sdpa")


def compare_inputs(run, cfg: DictConfig, old_data: str) -> list[Check]:
    """The code version, and every data file the re-run will read against the hash the run
    recorded for it (a file the run recorded no hash for is a warning: the record is incomplete)."""
    from sweep.pipeline.build import load_project_tasks, task_files

    checks = []
    commit, dirty = git_state()
    recorded = run.data.tags.get(GIT_COMMIT, "unknown")
    if recorded != commit:
        checks.append(Check(False, f"code: the run was at commit {recorded[:12]}, this checkout is at {commit[:12]}; "
                                   f"`git checkout {recorded[:12]}` to run the same code"))
    elif dirty:
        checks.append(Check(False, f"code: commit {commit[:12]} as recorded, but the working tree has uncommitted "
                                   f"changes"))
    else:
        checks.append(Check(True, f"code: commit {commit[:12]}, as recorded"))
    hashes = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data_sha256.json")
    hashes = hashes if isinstance(hashes, dict) else {}  # (from a store: any JSON at all; then nothing is recorded)
    by_relative = {relative(str(path), old_data): digest for path, digest in hashes.items() if isinstance(digest, str)}
    for here in task_files(load_project_tasks(cfg)[1]):
        digest = by_relative.get(relative(str(here), str(cfg.paths.data)))
        if digest is None:
            checks.append(Check(False, f"data: the run recorded no hash for {here}, so its data cannot be checked"))
        elif (now := sha256(here)) != digest:
            checks.append(Check(False, f"data: {here} differs from what the run read "
                                       f"(sha256 {digest[:12]} -> {now[:12]})"))
        else:
            checks.append(Check(True, f"data: {here} as the run read it"))
    return checks


def relative(path: str, folder: str) -> str:
    """`path` relative to the data folder it was read from (the key that matches across checkouts)."""
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


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
        # (a verdict is the sweep's; system metrics are the machine's)
        if any(v in name for v in VOLATILE) or name.startswith((VERDICT_PREFIX, system_metrics.PREFIX)):
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


def reproduce(run_id: str, strict: bool, rtol: float | None, allow=(), log=print) -> int:
    """Check, re-run and compare; the exit status (0 same, 1 different, 2 refused). What it shows
    holds store text (names, commits, metric names): control characters are shown, not obeyed."""
    shown = log
    log = lambda text: shown("\n".join(printable(line) for line in str(text).split("\n")))  # noqa: E731
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        raise ConfigError(f"run {run_id} is {run.info.status}: only a finished run has metrics to compare")
    cfg, old_data = recorded_config(run_id, allow, log)
    validate(cfg)  # stored values are checked as command-line values are, before anything runs
    checks = compare_inputs(run, cfg, old_data)
    for c in checks:
        log(("  ok    " if c.ok else "  WARN  ") + c.message)
    if strict and not all(c.ok for c in checks):
        log("refused (--strict): the code or the data differ from the run's (see WARN above)")
        return 2

    experiment = client.get_experiment(run.info.experiment_id).name
    with open_dict(cfg):
        # a stage that found its parent or judge in its sweep starts from the same runs (the tags say
        # which; lineage.resolve checks them again as it would any run named on the command line)
        for key, tag in (("init.run_id", PARENT_TAG), ("eval.judge_run_id", JUDGE_TAG)):
            if OmegaConf.select(cfg, key) is None and RUN_ID.fullmatch(run.data.tags.get(tag, "")):
                OmegaConf.update(cfg, key, run.data.tags[tag])
        cfg.tracking.uri = mlflow.get_tracking_uri()
        cfg.tracking.experiment = experiment
        cfg.tracking.sweep_id = f"reproduce-{run_id[:8]}"
        cfg.tracking.run_name = run.data.tags.get(RUN_NAME)
        cfg.tracking.tags = {REPRODUCES: run_id}
    log(f"re-running {run.data.tags.get(RUN_NAME)} ({run_id}) with seed {cfg.seed}")
    import torch  # (the job's libraries, only once nothing is refused: a refusal comes in seconds)

    from sweep.pipeline.job import run_job

    outcome = run_job(cfg)
    if outcome.status != "FINISHED":
        log(f"the re-run did not finish: {outcome.status} {outcome.error or ''}")
        return 1
    if rtol is None:
        rtol = 0.0 if not torch.cuda.is_available() else 1e-3
    rows = compare(metric_values(run_id), metric_values(outcome.run_id), rtol)
    log(format_comparison(rows))
    same = not any(v in ("DIFFERENT", "MISSING") for *_, v in rows)
    client.set_tag(outcome.run_id, REPRODUCE_MATCH, str(same).lower())
    client.log_dict(outcome.run_id, {"reproduces": run_id, "rtol": rtol, "checks": [c.__dict__ for c in checks],
                                     "metrics": [dict(zip(("metric", "original", "reproduced", "verdict"), r))
                                                 for r in rows]}, "reproduce_comparison.json")
    log(f"{'identical' if same else 'DIFFERENT'}: run {outcome.run_id} reproduces {run_id} "
        f"({sum(v in ('same', 'within rtol') for *_, v in rows)} metrics compared, rtol={rtol:g})")
    return 0 if same else 1
