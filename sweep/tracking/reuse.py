"""Verified reuse of what an earlier run recorded: find the run (by id, or by a key tag), download a
file it logged, and keep it only if it hashes to the sha256 the run recorded beside it.

Four things are reused this way: a baseline's scores (sweep/scoring/baseline_cache.py), a
reference policy's replies (sweep/stages/reference_replies.py), the adapters a stage starts from or
is judged by (sweep/stages/lineage.py) and generated training data (sweep/data/examples.py). The
store may be shared by a team, so what it holds is untrusted: a key searched for is ours (hex), a
run id is checked before it is used, and a file is trusted only after its hash matches.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from sweep.config import RUN_ID, ConfigError
from sweep.runtime.files import sha256
from sweep.runtime.secrets import redact
from sweep.tracking.store import require_store

KEY_FORMAT = re.compile(r"[0-9a-f]{64}")  # our cache keys: sha256 hex digests (safe to put in a filter string)
TAG_NAME = re.compile(r"[A-Za-z0-9_.]+")


def client(uri: str) -> mlflow.MlflowClient:
    """A client of the store at `uri` (which must exist: a reader never creates one)."""
    require_store(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def run_by_id(store: mlflow.MlflowClient, run_id, key: str, uri: str):
    """The run `key` (a config key) names; ConfigError when it is not a run id or not in the store."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{key}={run_id!r}: not an MLflow run id")
    try:
        return store.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(f"{key}={run_id}: no such run in {redact(uri)}; check tracking.uri") from None


def finished_runs(key_tag: str, key: str, conditions: str = "", max_results: int = 5) -> list:
    """The newest finished runs, in any experiment of the active store, tagged `key_tag` = `key`."""
    if not KEY_FORMAT.fullmatch(key) or not TAG_NAME.fullmatch(key_tag):
        raise ValueError(f"not a cache key: {key_tag}={key!r}")
    return mlflow.search_runs(
        search_all_experiments=True, order_by=["start_time DESC"], max_results=max_results, output_format="list",
        filter_string=f"tags.{key_tag} = '{key}' and attributes.status = 'FINISHED'"
                      + (f" and {conditions}" if conditions else ""))


def verified_copy(store: mlflow.MlflowClient, run_id: str, artifact: str, expected: str | None,
                  folder: Path) -> Path | None:
    """The run's `artifact` as `folder`/<its file name>: a copy already there is kept when it hashes to
    `expected`, else it is downloaded. None (and no file left) when the run has no such artifact or
    it does not hash to `expected`."""
    path = folder / Path(artifact).name
    if not expected:
        return None
    if path.is_file() and sha256(path) == expected:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        Path(store.download_artifacts(run_id, artifact, str(folder))).replace(path)
    except (mlflow.exceptions.MlflowException, OSError):
        return None
    if sha256(path) != expected:
        path.unlink()
        return None
    return path


MANIFEST = "MANIFEST.json"  # an artifact folder's files and their sha256: what a folder hash covers
_MANIFEST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def write_manifest(folder: Path) -> str:
    """Write `folder`/MANIFEST.json ({file: sha256} of every other file in it) and return its sha256:
    one hash that covers the folder whole (an adapter's config as much as its weights)."""
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({name: sha256(folder / name) for name in files}, sort_keys=True))
    return sha256(folder / MANIFEST)


def verified_folder(store: mlflow.MlflowClient, run_id: str, artifact_dir: str, expected: str | None,
                    folder: Path) -> Path | None:
    """The run's artifact folder as `folder`, every file of its manifest downloaded and checked against
    it, the manifest against `expected`; None (and nothing left) when any file is missing, does not
    hash as listed, or the manifest is malformed (store text: names are checked, never used as paths)."""
    manifest = verified_copy(store, run_id, f"{artifact_dir}/{MANIFEST}", expected, folder)
    try:
        listed = json.loads(manifest.read_text()) if manifest else None
    except (ValueError, UnicodeDecodeError):
        listed = None
    ok = isinstance(listed, dict) and bool(listed) and all(
        isinstance(k, str) and _MANIFEST_NAME.fullmatch(k) and k not in (".", "..", MANIFEST) and isinstance(v, str)
        for k, v in listed.items())
    if ok and all(verified_copy(store, run_id, f"{artifact_dir}/{name}", digest, folder) for name, digest in
                  listed.items()):
        extra = [p for p in folder.iterdir() if p.name not in listed and p.name != MANIFEST]
        for p in extra:  # (a file left from an older download is not part of what was hashed)
            p.unlink() if p.is_file() else shutil.rmtree(p)
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    return None


@contextmanager
def verified_download(run, artifact: str, hash_tag: str) -> Iterator[Path | None]:
    """The run's `artifact` in a temporary folder while the block runs, if it hashes to the sha256 in
    the run's tag `hash_tag`; else None."""
    with tempfile.TemporaryDirectory() as tmp:
        yield verified_copy(mlflow.MlflowClient(), run.info.run_id, artifact, run.data.tags.get(hash_tag), Path(tmp))
