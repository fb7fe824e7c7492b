"""Promoting a run's adapter to MLflow's model registry: a version of the registered model
`<experiment>-<task>`, with an alias (`champion` by default), tags that say what it is (base model,
method, the data's sha256, the verdict against the strongest baseline) and the verdict line as
its description; it loads with `mlflow.transformers.load_model("models:/<name>@champion")`.

    python -m sweep.ops.promote RUN_ID [--alias champion] [--tracking-uri URI]   (make promote RUN=...)

The version is MLflow's transformers flavour of a PEFT model: the run's adapter (a few MB) and a
reference to its base model's folder (`local_base_model_path` in its MLmodel; MLflow writes the
base's weights for a local base only when it is not told `base_model_path`, and then loads the
adapted layers freshly initialised: tests/test_tracking.py). The base is the folder the run trained
on (the bundled model's converted cache, or `model.name_or_path`); for a later stage (DPO, RL) it is
its parent stages merged into that base, written once under `paths.cache/promoted/`. On another
machine, `mlflow.transformers.load_model(uri, base_model_path=<that folder>)` names the base's copy
there; the version's `base_model_sha256` tag says which weights it must be. Only a FINISHED run is
ever registered, every adapter of its lineage checked against the sha256 its run recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import tempfile
from pathlib import Path

import mlflow

from sweep.config import ConfigError, default_tracking_uri
from sweep.pipeline.reproduce import recorded_config
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.secrets import guard_output
from sweep.tracking import reuse
from sweep.tracking.checks import REGISTRY_ALIAS
from sweep.tracking.reuse import KEY_FORMAT
from sweep.tracking.untrusted import printable
from sweep.vocabulary import BASE_MODEL, BASE_MODEL_PATH, TASKS, VERDICT_TAG_PREFIX

log = logging.getLogger(__name__)
CHAMPION = "champion"  # the alias a promoted version gets unless told otherwise
MODEL_DIR = "registered_model"  # the run's artifact folder the registered version points at
MAX_CHAIN = 10  # stages a run's adapter may stand on (SFT -> reward-judged RL -> ...)
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")  # what a registered model's name or a tag key cannot hold


def registered_name(experiment: str, tasks: str) -> str:
    """`<experiment>-<first task>`, in the characters every registry backend accepts."""
    return UNSAFE.sub("_", f"{experiment}-{tasks.split(',')[0]}").strip("_") or "sft-sweep"


def version_tags(run) -> dict[str, str]:
    """What the version is: base model, method, stage, the run's data (file name -> sha256) and its
    verdicts against the strongest baseline (store text, shown without control characters)."""
    tags = run.data.tags
    out = {k: printable(tags[k])[:500] for k in ("base_model", "method", "stage", "model", "tasks", "sweep_id")
           if k in tags}
    out |= {k: printable(v)[:500] for k, v in tags.items()
            if k.startswith(VERDICT_TAG_PREFIX) and not k.endswith(".detail")}
    try:
        hashes = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/data_sha256.json"))
    except Exception:  # noqa: BLE001  (a run without the file: no data tags)
        hashes = {}
    for path, digest in hashes.items() if isinstance(hashes, dict) else ():
        name = UNSAFE.sub("_", Path(str(path)).name)[:100]
        if KEY_FORMAT.fullmatch(str(digest)):
            out[f"data_sha256.{name}"] = str(digest)
    return out


def verdict_line(run) -> str:
    details = [printable(v) for k, v in sorted(run.data.tags.items())
               if k.startswith(VERDICT_TAG_PREFIX) and k.endswith(".detail")]
    return " ".join(details)[:5000] or "No verdict against the strongest baseline was recorded for this run."


def adapted_model(run_id: str, base: str, uri: str):
    """(the run's adapter as a PEFT model on its base, the base's folder, tokenizer): the base built from
    the run's recorded config as reproduce.py builds it, with the adapters of the run's earlier stages
    merged in (saved once, keyed by their content); each adapter checked against the sha256 its run
    recorded (each on the run's base model, `base`)."""
    from peft import PeftModel

    from sweep.stages.lineage import fetch, merged
    from sweep.stages.table import POLICY_HEAD
    from sweep.training.models import cached_build, load_model_and_tokenizer, model_source

    cfg, _ = recorded_config(run_id, log=log.info)
    cache = Path(cfg.paths.cache) / "promoted"
    chain, next_id = [], run_id
    while next_id is not None:
        if len(chain) == MAX_CHAIN:
            raise ConfigError(f"RUN={run_id}: its lineage is longer than {MAX_CHAIN} stages; the store was changed")
        ancestor = fetch("RUN", next_id, POLICY_HEAD, uri, base, cache)
        chain.insert(0, ancestor)
        next_id = ancestor.parent_id
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
    source = model_source(cfg.model, cfg.paths.cache, cfg.seed)
    if len(chain) > 1:  # a later stage's base is its parent stages merged in
        key = hashlib.sha256(json.dumps([source, *(a.content() for a in chain[:-1])], sort_keys=True).encode())
        model = merged(model, tuple(chain[:-1]))
        source = str(cached_build(cache / f"base-{key.hexdigest()[:16]}",
                                  lambda out: (model.save_pretrained(out), tokenizer.save_pretrained(out))))
    return PeftModel.from_pretrained(model, str(chain[-1].adapter)), source, tokenizer


def promote(run_id: str, alias: str = CHAMPION, uri: str | None = None):
    """Register the run's adapter, with a reference to its base, as a new version of `<experiment>-<task>`
    and point `alias` at it; returns the ModelVersion."""
    if not REGISTRY_ALIAS.fullmatch(alias):  # (before anything: a refused alias left a version registered)
        raise ConfigError(f"--alias {alias!r} is invalid: a letter, then letters, digits, _ or - (MLflow reserves "
                          "latest and v<number>), e.g. champion")
    uri = uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = reuse.client(uri)
    run = reuse.run_by_id(client, run_id, "RUN", uri)
    if run.info.status != "FINISHED":
        raise ConfigError(f"RUN={run_id} is {run.info.status}: only a finished run is registered")
    experiment = client.get_experiment(run.info.experiment_id).name
    name = registered_name(experiment, run.data.tags.get(TASKS, ""))
    model, base_path, tokenizer = adapted_model(run_id, run.data.tags.get(BASE_MODEL, ""), uri)
    import peft
    import torch
    import transformers

    from sweep.training.models import weights_digest

    requirements = [f"{m.__name__}=={m.__version__}" for m in (torch, transformers, peft)]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, f"{tmp}/model",
                                       task="text-generation", pip_requirements=requirements,
                                       base_model_path=base_path if Path(base_path).is_dir() else None)
        client.log_artifacts(run_id, f"{tmp}/model", MODEL_DIR)
    tags = version_tags(run) | {BASE_MODEL_PATH: base_path, "base_model_sha256": weights_digest(base_path)}
    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_DIR}", name, tags=tags)
    client.update_model_version(name, version.version, description=verdict_line(run))
    client.set_registered_model_alias(name, alias, version.version)
    log.info("run %s is version %s of registered model %s (alias %s): mlflow.transformers.load_model("
             "'models:/%s@%s')", run_id, version.version, name, alias, name, alias)
    return version


def main(argv=None) -> int:
    guard_output()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_id")
    p.add_argument("--alias", default=CHAMPION)
    add_tracking_uri(p)
    a = p.parse_args(argv)
    try:
        promote(a.run_id, a.alias, a.tracking_uri)
    except ConfigError as e:
        return refuse(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
