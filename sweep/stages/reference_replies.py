"""The reference policy's replies, generated once per reference and scoring settings.

A judged run compares its replies with its reference's (the parent policy, or the base model) on
the same prompts, with the same settings and seed. Every job of a sweep shares that reference (the
six arms of experiment=instruction_data the base model, the four RL stages of experiment=rlhf the
SFT policy), so each would generate the same replies again: half the scoring time of a judged run.
A run logs the reference's replies as `reference_replies.json` with tags `reference_key` (sha256 of
what they depend on, by content: the baseline cache's inputs with the decoding, the adapters merged
into the reference, the batch size, the judging code) and `reference_sha256` (of the file). A later
run with the same key reuses them (tag `reference_replies_from`). The store may be shared, so the
file is data: it must hash to what its run recorded and is read as strings only.
`eval.cache=false` generates them afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from sweep.runtime.files import module_digest
from sweep.scoring import baseline_cache
from sweep.stages.lineage import Ancestor
from sweep.tracking import records, reuse
from sweep.vocabulary import REFERENCE_FROM_TAG, REFERENCE_KEY_TAG, REFERENCE_REPLIES, REFERENCE_SHA_TAG

log = logging.getLogger(__name__)


Replies = dict[str, dict[int, str]]  # task -> doc_id -> the reference's reply


def replies_key(scoring: baseline_cache.Settings, quantization: DictConfig | None, batch_size: int, task_manager,
              files: list[Path], policy: tuple[Ancestor, ...]) -> str:
    """`scoring`: what the scores of the base model would depend on; `quantization` (method.quantization)
    and `batch_size` (eval.batch_size: a batch's padding, and sampling, follow it) change the replies."""
    inputs = {
        "scoring": baseline_cache.cache_key(scoring, task_manager, files),
        "reference": [a.content() for a in policy],  # merged into the base, first stage first (none: the base model)
        "quantization": OmegaConf.to_container(quantization) if quantization else None,
        "batch_size": batch_size,
        "judging_code": module_digest(baseline_cache.JUDGING_CODE),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def find(key: str, needed: dict[str, set[int]]) -> tuple[str, Replies] | None:
    """(run id, replies) of the latest finished run that generated the replies of this key, whose
    file still hashes to what it recorded and holds a reply to each `needed` task's docs; None when
    there is none."""
    for run in reuse.finished_runs(REFERENCE_KEY_TAG, key):
        if REFERENCE_FROM_TAG in run.data.tags:
            continue  # (a run that reused them: its source is the one to check)
        replies = _read(run)
        if replies is not None and all(ids <= set(replies.get(task, ())) for task, ids in needed.items()):
            return run.info.run_id, replies
        log.warning("reference replies of run %s do not hash to what it recorded, or are malformed: not reused",
                    run.info.run_id)
    return None


def _read(run) -> Replies | None:
    with reuse.verified_download(run, REFERENCE_REPLIES, REFERENCE_SHA_TAG) as path:
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return None
    if not isinstance(data, dict) or not all(
            isinstance(task, str) and isinstance(replies, dict) and
            all(isinstance(i, str) and i.isdigit() and isinstance(r, str) for i, r in replies.items())
            for task, replies in data.items()):
        return None
    return {task: {int(i): r for i, r in replies.items()} for task, replies in data.items()}


def record(replies: Replies, key: str, source: str | None) -> None:
    """Into the active run: the replies and their key, or (reused) the run they came from."""
    if source is not None:
        records.set_tags({REFERENCE_KEY_TAG: key, REFERENCE_FROM_TAG: source})
        return
    text = json.dumps({task: {str(i): r for i, r in sorted(rs.items())} for task, rs in replies.items()}, indent=1)
    def write():
        mlflow.log_text(text, REFERENCE_REPLIES)
        mlflow.set_tags({REFERENCE_KEY_TAG: key, REFERENCE_SHA_TAG: hashlib.sha256(text.encode()).hexdigest()})
    records.stored("logging the reference replies", write)
