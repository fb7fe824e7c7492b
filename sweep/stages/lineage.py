"""Stages that start from earlier runs: the policy a stage continues (`init.run_id`) and the reward
model that judges it (`eval.judge_run_id`), found and checked before any compute.

A run is named by its id, or found in the sweep itself: in a multirun, a stage with no
`init.run_id` continues this sweep's newest finished run of `stage.starts_from`, and a later stage
takes this sweep's reward run as its judge (required by the RL stages), so `python sweep.py -m
experiment=rlhf` chains its stages.

A stage trains a fresh LoRA adapter (the job's `lora` settings, so a DPO sweep can vary the rank) on
its parent policy merged into the base model; with the adapter disabled the model *is* the parent,
which is the frozen reference for the KL term and DPO. So a policy is its base model plus the
adapters of its lineage, merged root first: `fetch` follows `parent_run_id` up to the first stage.

The store may be shared by a team, so what it holds is untrusted input: a run's tags are only
compared with values of ours or checked to be run ids (never used as paths, code or query text), and
an adapter is fetched as JSON + safetensors (never pickle) and must hash to the sha256 its run
recorded when it logged it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import RUN_ID, ConfigError
from sweep.runtime.files import sha256
from sweep.stages.table import FIRST_STAGE, JUDGE_HEAD, JUDGE_STAGE, POLICY_HEAD, POLICY_STAGES, STAGES
from sweep.tracking import reuse
from sweep.tracking.untrusted import equals
from sweep.training.checks import LORA_INITS
from sweep.vocabulary import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_SHA_TAG,
    ADAPTER_WEIGHTS,
    BASE_MODEL,
    JUDGE_TAG,
    OLD_ADAPTER_SHA_TAG,
    PARENT_TAG,
    STAGE,
    SWEEP_ID,
    tag_field,
)

log = logging.getLogger(__name__)

SWEEP_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


@dataclass(frozen=True)
class Ancestor:
    """A finished run this job builds on, with its adapter fetched and checked."""
    run_id: str
    stage: str
    adapter: Path            # folder with adapter_config.json and adapter_model.safetensors
    parent_id: str | None    # the run it started from (its `parent_run_id` tag, checked to be a run id)

    def content(self) -> dict[str, str]:
        """sha256 of the adapter's files: what a cache key holds of this run (never its id or path)."""
        return {name: sha256(self.adapter / name) for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}


MAX_LINEAGE = 8  # stages between a policy and its first stage: more is a loop in a changed store


@dataclass(frozen=True)
class Lineage:
    policy: tuple[Ancestor, ...] = ()  # the parent policy's lineage, first stage first (empty: the base model)
    judge: Ancestor | None = None      # the reward model

    @property
    def parent(self) -> Ancestor | None:
        return self.policy[-1] if self.policy else None

    def tags(self) -> dict[str, str]:
        return ({PARENT_TAG: self.parent.run_id, "parent_stage": self.parent.stage} if self.parent else {}) | (
            {JUDGE_TAG: self.judge.run_id} if self.judge else {})


@dataclass(frozen=True)
class LineageScope:
    """Where a stage's earlier runs are looked for: the store, this job's experiment and sweep."""
    uri: str
    experiment: str
    sweep_id: str
    multirun: bool  # a single run names its runs by id; only a multirun finds them in its sweep


def resolve(stage: DictConfig, init_run_id: str | None, judge_run_id: str | None, where: LineageScope, base_model: str,
            cache: Path) -> Lineage:
    """The runs this job starts from and is judged by; ConfigError (one line, no compute) when a run is
    missing, unfinished, of the wrong stage, on another base model, or has no adapter. Adapters are
    fetched into `cache`/<run id>/."""
    parent_id = init_run_id
    if parent_id is None and stage.starts_from:
        parent_id = in_sweep(where, stage.name, stage.starts_from, "init.run_id")
    judge_id = judge_run_id
    if judge_id is None and stage.starts_from:  # (a later stage is scored by the sweep's reward model, if any)
        judge_id = in_sweep(where, stage.name, JUDGE_STAGE, "eval.judge_run_id", required=STAGES[stage.name].judged)
    policy = []
    while parent_id:  # the parent, its parent, ... up to the first stage
        if len(policy) == MAX_LINEAGE or parent_id in {a.run_id for a in policy}:
            raise ConfigError(f"init.run_id={policy[0].run_id}: its lineage (parent_run_id tags) does not end "
                              f"within {MAX_LINEAGE} runs; the store was changed: start from another run")
        key = "init.run_id" if not policy else f"init.run_id's ancestor {parent_id}"
        policy.append(fetch(key, parent_id, POLICY_HEAD, where.uri, base_model, cache))
        parent_id = policy[-1].parent_id
    judge = fetch("eval.judge_run_id", judge_id, JUDGE_HEAD, where.uri, base_model, cache) if judge_id else None
    return Lineage(tuple(reversed(policy)), judge)


def in_sweep(where: LineageScope, this_stage: str, stage: str, key: str, required: bool = True) -> str | None:
    """The newest finished run of `stage` in this sweep (same experiment, same sweep_id tag); when
    there is none, a ConfigError if `required`, else None."""
    needs = f"stage={this_stage} starts from a stage={stage} run" if key == "init.run_id" else \
        f"stage={this_stage} trains against a reward model (a stage={JUDGE_STAGE} run)"
    if not where.multirun:
        if not required:
            return None
        raise ConfigError(f"{key} is not set: {needs}; give {key}=<its run id>")
    if not set(where.sweep_id) <= SWEEP_ID_CHARS:
        raise ConfigError(f"tracking.sweep_id={where.sweep_id!r}: use letters, digits and _-.: only "
                          "(it is searched for)")
    store = reuse.client(where.uri)
    experiment = store.get_experiment_by_name(where.experiment)
    runs = [] if experiment is None else store.search_runs(
        [experiment.experiment_id],
        filter_string=(f"{equals(tag_field(SWEEP_ID), where.sweep_id)} and {equals(tag_field(STAGE), stage)} "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs and not required:
        return None
    if not runs:
        raise ConfigError(f"{key} is not set and sweep {where.sweep_id} has no finished stage={stage} run: {needs}; "
                          f"sweep stage={stage} before it (e.g. experiment=rlhf), or give {key}=<run id>")
    return runs[0].info.run_id


def fetch(key: str, run_id: str, head: str, uri: str, base_model: str, cache: Path) -> Ancestor:
    """Check the run named by `key` (a policy, or a reward model: `head`) and fetch its adapter into
    `cache`/<run id>/."""
    store = reuse.client(uri)
    run = reuse.run_by_id(store, run_id, key, uri)
    tags = run.data.tags
    stage = tags.get(STAGE, FIRST_STAGE)  # (runs from before the pipeline existed are SFT runs)
    if stage not in STAGES or STAGES[stage].head != head:
        wanted = "a policy (stage " + ", ".join(POLICY_STAGES) + ")" if head == POLICY_HEAD else \
            f"a stage={JUDGE_STAGE} run"
        raise ConfigError(f"{key}={run_id} is a stage={stage if stage in STAGES else '?'} run; "
                          f"{key} needs {wanted}")
    if run.info.status != "FINISHED":
        raise ConfigError(f"{key}={run_id}: the run is {run.info.status.lower()}, not finished; use a finished run")
    if tags.get(BASE_MODEL) != base_model:
        raise ConfigError(f"{key}={run_id} was trained on another base model than this job's ({base_model}); "
                          f"choose the model it was trained on (its run's `model` param)")
    expected = tags.get(ADAPTER_SHA_TAG)
    if expected is None and tags.get(OLD_ADAPTER_SHA_TAG):
        raise ConfigError(f"{key}={run_id}: its adapter was recorded with only its weights hashed (its config could "
                          f"have been changed since): train that stage again")
    if expected is None:
        raise ConfigError(f"{key}={run_id}: the run has no adapter (a baseline, a full fine-tune, or "
                          f"tracking.log_adapter=false); start from a run that trained with method=lora")
    folder = cache / run_id
    if not verified_adapter(store, run_id, expected, folder):
        raise ConfigError(f"{key}={run_id}: the adapter folder does not match the manifest sha256 its run recorded; "
                          "the store was changed after the run: train that stage again")
    check_adapter(key, run_id, folder, head)
    log.info("%s: %s run %s (adapter %s...)", key, stage, run_id, expected[:12])
    parent = tags.get(PARENT_TAG)
    if parent is not None and not RUN_ID.fullmatch(parent):
        raise ConfigError(f"{key}={run_id}: its {PARENT_TAG} tag is not a run id; the store was changed")
    return Ancestor(run_id, stage, folder, parent)


def verified_adapter(store, run_id: str, expected: str | None, folder: Path) -> bool:
    """Whether the run's adapter folder, fetched into `folder`, matches its manifest and the manifest
    `expected` (its ADAPTER_SHA_TAG), with a config and weights among its files; nothing is left in
    `folder` when it does not."""
    ok = reuse.verified_folder(store, run_id, ADAPTER_DIR, expected, folder) is not None and all(
        (folder / name).is_file() for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS))
    if not ok:
        shutil.rmtree(folder, ignore_errors=True)
    return ok


# Fields of a LoRA config that change the model beyond the adapter (duplicating layers, rewriting the
# base weights as the adapter is loaded: LoftQ, EVA, CorDA, LoRA-GA...) or name a module for peft to
# import (megatron_core), with the values a stage of this project writes (lora.init's choices among
# them): a stored adapter with any other value was not written by one. {field: allowed values}.
PEFT_DEFAULTS = {"layer_replication": (None,), "megatron_config": (None,), "megatron_core": ("megatron.core", None),
                 "init_lora_weights": tuple(LORA_INITS.values()), "loftq_config": ({}, None), "eva_config": (None,),
                 "corda_config": (None,), "lora_ga_config": (None,)}


def check_adapter(key: str, run_id: str, folder: Path, task_type: str | None) -> None:
    """The adapter in `folder` must be a LoRA adapter of the expected kind, with only the fields
    peft's LoraConfig has, none that reshapes the model or names a module, and weights in the
    safetensors format (a store is untrusted: a pickle under that name would be refused by
    safetensors mid-load, with a traceback)."""
    check_adapter_config(key, run_id, folder / ADAPTER_CONFIG, task_type)
    from safetensors import safe_open

    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as weights:
            weights.keys()
    except Exception:  # noqa: BLE001  (safetensors raises its own error type, or OSError)
        raise ConfigError(f"{key}={run_id}: its {ADAPTER_WEIGHTS} is not a safetensors file; refused "
                          "(train that stage again)") from None


def check_adapter_config(key: str, run_id: str, path: Path, task_type: str | None) -> None:
    """The adapter config must be a LoRA adapter's of the expected kind (any, for None), with only the fields peft's
    LoraConfig has and their defaults where a value would reshape the model (PEFT_DEFAULTS)."""
    import dataclasses

    from peft import LoraConfig

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{key}={run_id}: its adapter_config.json is not JSON; train that stage again") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or (
            task_type is not None and config.get("task_type") != task_type):
        raise ConfigError(f"{key}={run_id}: its adapter is not a {task_type} LoRA adapter; "
                          f"{key} needs a run of the stage named above")
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(LoraConfig)})
    reshaping = [k for k, allowed in PEFT_DEFAULTS.items() if k in config and not any(
        config[k] == a and type(config[k]) is type(a) for a in allowed)]
    if unknown or reshaping:
        raise ConfigError(f"{key}={run_id}: its adapter_config.json sets {', '.join(map(repr, unknown + reshaping))}, "
                          f"which no stage of this project writes; refused (train that stage again)")


def merged(model, ancestors: tuple[Ancestor, ...]):
    """`model` (the base) with each ancestor's LoRA adapter merged into its weights, first stage first."""
    from peft import PeftModel

    for ancestor in ancestors:
        model = PeftModel.from_pretrained(model, str(ancestor.adapter)).merge_and_unload()
    return model
