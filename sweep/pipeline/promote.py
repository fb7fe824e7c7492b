"""Promoting a run's adapter to MLflow's model registry: a version of the registered model
`<experiment>-<task>`, with an alias (`champion` by default), tags that say what it is (base model,
method, the data's sha256, the verdict against the strongest baseline) and the verdict line as
its description; it loads with `mlflow.transformers.load_model("models:/<name>@champion")`.

    python -m sweep.pipeline.promote RUN_ID [--alias champion] [--tracking-uri URI]   (make promote RUN=...)

Why the adapter is registered merged into its base: MLflow's transformers flavour saves a PEFT model
as adapter + base reference only when the base is a Hugging Face Hub id; for a local base (the
bundled GGUF's cached folder, any folder) it writes the wrapped weights under PEFT's names, which
load back with the adapted layers freshly initialised. Merged weights (safetensors) load as they
scored. Only a FINISHED run is ever registered, its adapter checked against the sha256 it recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

import mlflow

from sweep.config import ConfigError, default_tracking_uri
from sweep.pipeline.reproduce import recorded_config
from sweep.runtime.secrets import guard_output, redact
from sweep.tracking import reuse
from sweep.tracking.checks import REGISTRY_ALIAS
from sweep.tracking.records import VERDICT_TAG_PREFIX
from sweep.tracking.reuse import KEY_FORMAT
from sweep.tracking.untrusted import printable

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


def merged_model(run_id: str, base: str, uri: str):
    """(the run's model: its base with every adapter of its lineage merged in, tokenizer), the base
    built from the run's recorded config as reproduce.py builds it, each adapter checked against the
    sha256 its run recorded (each on the run's base model, `base`)."""
    from sweep.rlhf.lineage import fetch, merged
    from sweep.rlhf.stages import POLICY_HEAD
    from sweep.training.models import load_model_and_tokenizer

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
    return merged(model, tuple(chain)), tokenizer


def promote(run_id: str, alias: str = CHAMPION, uri: str | None = None):
    """Register the run's adapter (merged) as a new version of `<experiment>-<task>` and point
    `alias` at it; returns the ModelVersion."""
    uri = uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = reuse.client(uri)
    run = reuse.run_by_id(client, run_id, "RUN", uri)
    if run.info.status != "FINISHED":
        raise ConfigError(f"RUN={run_id} is {run.info.status}: only a finished run is registered")
    if not REGISTRY_ALIAS.fullmatch(alias):
        raise ConfigError(f"--alias {alias!r} is invalid: a letter, then letters, digits, _ or - (e.g. champion)")
    experiment = client.get_experiment(run.info.experiment_id).name
    name = registered_name(experiment, run.data.tags.get("tasks", ""))
    model, tokenizer = merged_model(run_id, run.data.tags.get("base_model", ""), uri)
    import peft
    import torch
    import transformers

    requirements = [f"{m.__name__}=={m.__version__}" for m in (torch, transformers, peft)]
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, f"{tmp}/model",
                                       task="text-generation", pip_requirements=requirements)
        client.log_artifacts(run_id, f"{tmp}/model", MODEL_DIR)
    version = mlflow.register_model(f"runs:/{run_id}/{MODEL_DIR}", name, tags=version_tags(run))
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
    p.add_argument("--tracking-uri", default=default_tracking_uri(),
                   help="default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    a = p.parse_args(argv)
    try:
        promote(a.run_id, a.alias, a.tracking_uri)
    except ConfigError as e:
        print(f"error: {printable(redact(str(e)))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
