"""Credentials never leave the process: redaction of URLs by parsing, and an end-to-end test that
plants passwords and tokens in every way a user passes a store (command line, environment, config
values) and then searches every file, param, tag, artifact, study attribute and captured output."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import mlflow
import optuna
import pytest

from sweep.runtime.secrets import MASK, redact
from sweep.study.storage import make_storage
from tests import forked
from tests.conftest import ROOT, TINY, clean_env


@pytest.mark.parametrize("text, expected", [
    ("postgresql://bob:hunter2@db:5432/optuna", "postgresql://bob:***@db:5432/optuna"),
    ("postgresql://:hunter2@db/optuna", "postgresql://:***@db/optuna"),  # password without a user
    ("tracking.uri=https://TOKEN123@mlflow.example/x", "tracking.uri=https://***@mlflow.example/x"),  # a token alone
    ("postgresql+psycopg://u@h:1/db?sslmode=require&password=hunter2", "postgresql+psycopg://***@h:1/db?sslmode=require&password=***"),
    ("https://h/a?X-Amz-Signature=abcd&b=1#top", "https://h/a?X-Amz-Signature=***&b=1#top"),
    ("['tracking.uri=http://al:pw12@127.0.0.1:5000', 'x=1']", "['tracking.uri=http://al:***@127.0.0.1:5000', 'x=1']"),
    ("sqlite:////tmp/mlflow.db?timeout=5", "sqlite:////tmp/mlflow.db?timeout=5"),  # nothing secret: unchanged
    ("see http://example.com/a.b, then", "see http://example.com/a.b, then"),
])
def test_redact_masks_credentials_found_by_parsing(text, expected):
    assert redact(text) == expected


def test_redact_masks_the_store_variables_credentials_anywhere(monkeypatch):
    """A driver may echo a password outside any URL; the store variables' credentials go too."""
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg://me:s3cr3t-pw@db/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-abcdef")
    assert redact('FATAL: password "s3cr3t-pw" rejected; token tok-abcdef') == f'FATAL: password "{MASK}" rejected; ' \
                                                                             f"token {MASK}"


def test_guard_output_redacts_logging_streams_and_uncaught_tracebacks():
    code = """if True:
        import logging, sys
        from sweep.runtime.secrets import guard_output
        guard_output(); guard_output()  # twice: still one layer
        logging.basicConfig()
        logging.getLogger("x").error("store at %s", "postgresql://u:pw-9876@h/db")
        print("http://u:pw-5432@h/x")
        try:
            raise RuntimeError("cannot reach https://TOKEN999@h/api")
        except RuntimeError:
            logging.getLogger("x").exception("failed")
        raise SystemError("uncaught: sqlite:///x.db?password=pw-1111")
    """
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=clean_env())
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "SystemError: uncaught: sqlite:///x.db?password=***" in p.stderr
    assert not any(s in out for s in ("pw-9876", "pw-5432", "TOKEN999", "pw-1111")) and out.count(MASK) == 4, out


@pytest.mark.e2e
def test_planted_secrets_appear_nowhere(services, tmp_path):
    """Passwords and tokens in the tracking URI (command line and environment), the study storage
    (command line, with the password as a query parameter), a token variable, a config value and a
    failing model location; then every output is searched for them."""
    pg = urlsplit(services["OPTUNA_STORAGE"])
    db_password, mlflow_host = pg.password, urlsplit(services["MLFLOW_TRACKING_URI"]).netloc
    token, bearer, tag_token, model_token = (f"{kind}{uuid.uuid4().hex[:10]}" for kind in
                                             ("tok", "bearer", "tagtok", "modeltok"))
    user, user_pw = services["MLFLOW_TRACKING_USERNAME"], services["MLFLOW_TRACKING_PASSWORD"]  # (the server's login)
    secrets = [db_password, user_pw, token, bearer, tag_token, model_token]
    experiment, study = f"secrets-{uuid.uuid4().hex[:6]}", f"secrets-{uuid.uuid4().hex[:6]}"
    tracking_cli = f"http://{user}:{user_pw}@{mlflow_host}"
    storage_cli = f"postgresql+psycopg://{pg.username}@{pg.hostname}:{pg.port}{pg.path}?password={db_password}"
    outputs = []

    def run(args, env_extra=(), command=("sweep.py",)):
        env = clean_env() | {"MLFLOW_TRACKING_TOKEN": bearer} | dict(env_extra)
        p = forked.run([*command, *args], ROOT, env, timeout=900)
        outputs.append(p.stdout + p.stderr)
        return p

    # An Optuna study: tracking URI with a password and the storage with ?password= on the command line.
    p = run(["-m", "hydra/sweeper=optuna", *TINY, "hydra.sweeper.n_trials=2", f"hydra.sweeper.study_name={study}",
             f"hydra.sweeper.storage='{storage_cli}'", f"tracking.uri='{tracking_cli}'", "lora.r=choice(1,2)",
             f"tracking.experiment={experiment}", f"tracking.tags={{source:'https://{tag_token}@git.example/r'}}",
             f"hydra.sweep.dir={tmp_path}/study"])
    assert p.returncode == 0, p.stderr[-3000:]
    # A failing run with the login in the tracking URI from the environment; a failing model location
    # with a token-only tracking URI (which the server refuses: the refusal must not show it either).
    env = {"MLFLOW_TRACKING_URI": tracking_cli, "OPTUNA_STORAGE": services["OPTUNA_STORAGE"]}
    p = run([*TINY, f"tracking.experiment={experiment}", "debug.fail_at_step=1", f"hydra.run.dir={tmp_path}/failed"],
            env)
    assert p.returncode != 0
    env = {"MLFLOW_TRACKING_URI": f"http://{token}@{mlflow_host}", "OPTUNA_STORAGE": services["OPTUNA_STORAGE"]}
    p = run([*TINY, f"tracking.experiment={experiment}", f"model.name_or_path='https://{model_token}@hub.example/m'",
             f"hydra.run.dir={tmp_path}/badmodel"], env)
    assert p.returncode != 0
    # The readers: a report, a summary and a reproduction that fails to find its run.
    p = run(["--experiment", experiment, "--tracking-uri", tracking_cli, "--out", str(tmp_path / "report")],
            command=("-m", "analysis.report"))
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(["0123456789abcdef", "--tracking-uri", tracking_cli], command=("reproduce.py",))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1

    # Every run's params, tags and artifacts, through the server.
    mlflow.set_tracking_uri(services["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=[experiment])
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED", "FAILED"}  # parent, 2 trials, the failed run
    records = [runs.to_csv(), json.dumps(mlflow.get_experiment_by_name(experiment).tags)]
    for run_id in runs["run_id"]:
        mlflow.artifacts.download_artifacts(f"runs:/{run_id}/", dst_path=str(tmp_path / "artifacts" / run_id))
    assert list((tmp_path / "artifacts").rglob("traceback.txt")) and list((tmp_path / "artifacts").rglob("config.yaml"))
    # The study's attributes in PostgreSQL.
    s = optuna.load_study(study_name=study, storage=make_storage(services["OPTUNA_STORAGE"]))
    storage = s._storage
    records.append(json.dumps([s.user_attrs, storage.get_study_system_attrs(s._study_id)]
                              + [[t.params, t.user_attrs, t.system_attrs] for t in s.trials], default=str))
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert any(f.name == "overrides.yaml" for f in files) and any(f.name == "index.html" for f in files)
    for secret in secrets:
        assert not [i for i, o in enumerate(outputs) if secret in o], secret
        assert not [r for r in records if secret in r], secret
        assert not [f for f in files if secret.encode() in f.read_bytes()], secret
    assert any(MASK in o for o in outputs)  # the URLs were shown, masked
