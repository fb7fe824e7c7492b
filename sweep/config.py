"""The project's constants, its config resolvers and Hydra composition, and the vocabulary every
group's checks share (ConfigError, `require`). Each group's owner checks its own keys
(sweep/*/checks.py, sweep/stages/table.py); sweep/pipeline/checks.py runs them in order.

Every error names the key, the bad value and what would be accepted, so a typo in a sweep
costs a second, not a model load.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"  # the config groups (conf/<group>/<option>.yaml)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: a team's server, when set

DEFAULT_TEMPLATE = "default"  # eval.template whose task is tasks/<task>.yaml itself (others: <task>_<template>)
RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id


class ConfigError(ValueError):
    """Bad user input, found before any compute; the message says which key and how to fix it."""


def default_tracking_uri(root: str | Path = PROJECT_ROOT) -> str:
    """$MLFLOW_TRACKING_URI when set (as every MLflow tool reads it), else the embedded SQLite
    store in the project folder."""
    return os.environ.get(TRACKING_URI_ENV) or f"sqlite:///{Path(root)}/mlflow.db"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT), replace=True)
    OmegaConf.register_new_resolver("default_tracking_uri", default_tracking_uri, replace=True)
    # Derived values in sweeps, e.g. `lora.alpha='${mul:2,${lora.r}}'`.
    OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)


def compose_config(overrides: list[str] = ()) -> DictConfig:
    """The config `python sweep.py OVERRIDES` runs (Hydra's compose API), for tools other than sweep.py."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml (a `_`-prefixed file is a shared part)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def close_matches(value: str, allowed) -> str:
    """' (did you mean: x?)' when something in `allowed` is close to `value`, else ''."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(near)}?)" if near else ""


def require(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {rule}")


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def run_id_or_null(key: str, value) -> None:
    require(value is None or (isinstance(value, str) and RUN_ID.fullmatch(value) is not None), key, value,
            "must be an MLflow run id (32 hex digits, as `mlflow runs list` or the run's page shows) or null")
