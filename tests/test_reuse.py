"""Verified reuse (sweep/tracking/reuse.py): a file an earlier run logged is used only if it hashes
to the sha256 the run recorded; a cached copy that still does is not downloaded again."""

import hashlib

import mlflow
import pytest

from sweep.config import ConfigError
from sweep.tracking import reuse

KEY = hashlib.sha256(b"settings").hexdigest()


@pytest.fixture
def logged(tmp_path):
    """(uri, run id, sha256) of a finished run that logged `out/data.txt` and tagged its hash and a key."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("reuse", artifact_location=(tmp_path / "artifacts").as_uri())
    text = "the scores\n"
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text(text, "out/data.txt")
        mlflow.set_tags({"data_sha256": hashlib.sha256(text.encode()).hexdigest(), "cache_key": KEY})
    return uri, run.info.run_id, hashlib.sha256(text.encode()).hexdigest(), tmp_path


def test_a_file_that_hashes_to_its_record_is_reused_and_kept(logged):
    uri, run_id, digest, tmp = logged
    store = reuse.client(uri)
    path = reuse.verified_copy(store, run_id, "out/data.txt", digest, tmp / "cache")
    assert path == tmp / "cache" / "data.txt" and path.read_text() == "the scores\n"
    store.download_artifacts = lambda *a: pytest.fail("a verified copy is not downloaded again")
    assert reuse.verified_copy(store, run_id, "out/data.txt", digest, tmp / "cache") == path


def test_a_changed_file_is_refused_and_not_left_behind(logged):
    uri, run_id, digest, tmp = logged
    stored = next((tmp / "artifacts").rglob("data.txt"))
    stored.write_text("edited scores\n")
    assert reuse.verified_copy(reuse.client(uri), run_id, "out/data.txt", digest, tmp / "cache") is None
    assert not (tmp / "cache" / "data.txt").exists()
    assert reuse.verified_copy(reuse.client(uri), run_id, "out/data.txt", None, tmp / "cache") is None  # no record
    [run] = reuse.finished_runs("cache_key", KEY)
    with reuse.verified_download(run, "out/data.txt", "data_sha256") as path:
        assert path is None


def test_runs_are_found_by_our_key_only(logged):
    uri, run_id, digest, tmp = logged
    assert [r.info.run_id for r in reuse.finished_runs("cache_key", KEY)] == [run_id]
    with reuse.verified_download(reuse.finished_runs("cache_key", KEY)[0], "out/data.txt", "data_sha256") as path:
        assert path.read_text() == "the scores\n"
    with pytest.raises(ValueError, match="not a cache key"):
        reuse.finished_runs("cache_key", "x' or tags.cached = 'true")


def test_a_run_named_by_the_user_is_checked_before_use(logged):
    uri, run_id, digest, tmp = logged
    store = reuse.client(uri)
    with pytest.raises(ConfigError, match="data.generated='latest': not an MLflow run id"):
        reuse.run_by_id(store, "latest", "data.generated", uri)
    with pytest.raises(ConfigError, match=f"init.run_id={'0' * 32}: no such run in"):
        reuse.run_by_id(store, "0" * 32, "init.run_id", uri)
    assert reuse.run_by_id(store, run_id, "init.run_id", uri).info.run_id == run_id
    with pytest.raises(ConfigError, match="no tracking store at"):
        reuse.client(f"sqlite:///{tmp}/missing.db")
