"""`make upload RUN=<run id>` (`python -m sweep.pipeline.upload RUN_ID`): upload an adapter whose
upload failed (a full or unwritable artifact store) from where the job kept it on this machine,
tag its sha256 and remove the local copy. The folder is this checkout's `paths.pending`/<run id>,
never a path read from the store (a store is untrusted: a path there could name any file)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import mlflow

from sweep.config import RUN_ID, ConfigError, compose_config, default_tracking_uri
from sweep.runtime.secrets import guard_output, redact
from sweep.tracking.records import ADAPTER_WEIGHTS, pending_folder, upload_adapter
from sweep.tracking.reuse import client, run_by_id

log = logging.getLogger(__name__)


def upload(run_id: str, tracking_uri: str, pending_root: Path) -> Path:
    """Upload the run's pending adapter; the folder it came from."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{run_id!r} is not an MLflow run id (32 hex digits)")
    folder = pending_folder(pending_root, run_id)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"no adapter waits for run {run_id} in {folder}: nothing to upload")
    store = client(tracking_uri)
    run_by_id(store, run_id, "RUN", tracking_uri)  # (refused in one line when the store has no such run)
    mlflow.set_tracking_uri(tracking_uri)
    upload_adapter(folder, run_id)
    store.set_tag(run_id, "adapter_uploaded_later", "true")
    shutil.rmtree(folder.parent)
    return folder


def main(argv: list[str] | None = None) -> int:
    guard_output()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m sweep.pipeline.upload", description=__doc__.split("\n\n")[0])
    p.add_argument("run_id")
    p.add_argument("--tracking-uri", default=default_tracking_uri(),
                   help="default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    p.add_argument("--pending", help="where the job kept the adapter (its paths.pending; default: this checkout's)")
    a = p.parse_args(argv)
    pending = Path(a.pending or compose_config().paths.pending)
    try:
        folder = upload(a.run_id, a.tracking_uri, pending)
    except ConfigError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    except (OSError, mlflow.exceptions.MlflowException) as e:
        print(f"error: the upload failed again ({redact(str(e).splitlines()[0][:200])}); the adapter stays in "
              f"{pending_folder(pending, a.run_id)}", file=sys.stderr)
        return 1
    log.info("uploaded the adapter of run %s from %s", a.run_id, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
