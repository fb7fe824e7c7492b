"""One retry helper (sweep/runtime/retry.py) serves every recovery loop: for each, a transient
failure is tried again through it (its warnings are the helper's, said once) and a permanent one is
raised at once, after one attempt."""

from __future__ import annotations

import contextlib
import logging
from types import SimpleNamespace

import mlflow
import pytest
import requests
import sqlalchemy.exc

from sweep.runtime import retry as retry_module
from sweep.runtime.retry import first_line, retry
from sweep.study import storage
from sweep.tracking import lifecycle, outage, records

DOWN = requests.exceptions.ConnectionError("connection refused by http://u:s3cret@host:5000")


@pytest.fixture
def pauses(monkeypatch):
    """The helper's pauses, recorded instead of slept."""
    slept = []
    monkeypatch.setattr(retry_module.time, "sleep", slept.append)
    return slept


def failing(times: int, error: BaseException, result="done"):
    """A call that raises `error` its first `times` calls, then returns `result`; `.calls` counts."""
    def call(*args, **kwargs):
        call.calls += 1
        if call.calls <= times:
            raise error
        return result
    call.calls = 0
    return call


def helper_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry_module.__name__]


def test_the_helper_backs_off_says_so_twice_and_gives_up_with_the_callers_error(pauses, caplog):
    caplog.set_level(logging.WARNING)
    call = failing(3, DOWN)
    assert retry(call, transient=outage.unreachable, seconds=60, who="the server", what="writing") == "done"
    assert call.calls == 4 and pauses == [1.0, 2.0, 4.0]
    said = helper_lines(caplog)
    assert len(said) == 2 and "the server is unreachable while writing" in said[0] and "s3cret" not in said[0]
    assert said[1].startswith("the server answers again after")
    with pytest.raises(TimeoutError, match="gave up"):
        retry(failing(99, DOWN), transient=outage.unreachable, seconds=5, who="w", what="x",
              give_up=lambda e: TimeoutError("gave up"))
    permanent = failing(1, ValueError("refused"))
    with pytest.raises(ValueError):
        retry(permanent, transient=outage.unreachable, seconds=60, who="w", what="x")
    assert permanent.calls == 1
    assert first_line(ValueError("")) == "ValueError" and first_line(ValueError("a\nb")) == "a"


def test_a_jobs_write_waits_for_the_tracking_server_through_the_helper(pauses, caplog):
    caplog.set_level(logging.WARNING)
    write = failing(2, DOWN)
    assert outage.patiently(write, "logging scores", seconds=60) == "done" and write.calls == 3
    assert len(helper_lines(caplog)) == 2
    with pytest.raises(outage.TrackingUnavailable, match="has not answered for 3 s while logging scores"):
        outage.patiently(failing(99, DOWN), "logging scores", seconds=3)
    refused = failing(1, mlflow.exceptions.RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "no"}))
    with pytest.raises(mlflow.exceptions.MlflowException):
        outage.patiently(refused, "logging scores", seconds=60)
    assert refused.calls == 1
    # a server whose database is away answers 503 TEMPORARILY_UNAVAILABLE, or its auth app an HTML 500 (raised at
    # once when MLflow's own retries are off): waited for like a server that is down, as MLflow's retries would
    # (before: the job failed at once, and its run's FAILED close too, leaving the run RUNNING)
    page = ("API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 500 != 200. "
            "Response body: '<!doctype html><title>500 Internal Server Error</title>'")
    for answer in (mlflow.exceptions.RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "psycopg"}),
                   mlflow.exceptions.MlflowException(page)):
        database_away = failing(2, answer)
        assert outage.patiently(database_away, "logging scores", seconds=60) == "done" and database_away.calls == 3
    for refusal in (mlflow.exceptions.RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}),
                    mlflow.exceptions.MlflowException(page.replace("500", "404")),
                    mlflow.exceptions.MlflowException("a local store's error (INTERNAL_ERROR by default)")):
        assert not outage.unreachable(refusal)


def test_the_curve_keeps_its_points_through_an_outage_and_stops_at_a_refusal(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    sent = []
    log_batch = failing(2, DOWN)

    class Client:
        def log_batch(self, run_id, metrics):
            log_batch()
            sent.extend(m.value for m in metrics)

    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    monkeypatch.setattr(outage.CurveSender, "_pause", lambda self, seconds: None)
    sender = outage.CurveSender("0" * 32, seconds=60)
    sender.log({"train/loss": 1.5}, step=1)
    assert sender.close(30) and sent == [1.5] and log_batch.calls == 3
    assert any("while sending the training curve" in line for line in helper_lines(caplog))
    log_batch = failing(99, mlflow.exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST"))
    sender = outage.CurveSender("1" * 32, seconds=60)
    sender.log({"train/loss": 2.0}, step=1)
    assert not sender.close(30) and isinstance(sender.error, mlflow.exceptions.MlflowException)
    assert log_batch.calls == 1


def test_closing_a_run_waits_for_the_server_but_not_for_a_refused_write(monkeypatch, pauses, caplog):
    caplog.set_level(logging.WARNING)
    set_terminated = failing(2, DOWN)
    monkeypatch.setattr(mlflow, "MlflowClient", lambda: SimpleNamespace(
        set_tag=lambda *a: None, log_text=lambda *a: None, set_terminated=lambda run_id, status: set_terminated()))
    run = SimpleNamespace(info=SimpleNamespace(run_id="0" * 32))
    lifecycle._close_now(run, "FAILED", {"error": "x"}, None, 60)
    assert set_terminated.calls == 3 and pauses == [0.5, 1.0]
    set_terminated = failing(99, mlflow.exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST"))
    with pytest.raises(mlflow.exceptions.MlflowException):
        lifecycle._close_now(run, "FAILED", {}, None, 60)
    assert set_terminated.calls == 1
    assert any("could not be recorded FAILED" in r.getMessage() for r in caplog.records)


def test_opening_the_experiment_and_starting_the_run_wait_for_a_server_then_fail_for_a_retry(monkeypatch, pauses):
    """What a job does before its run exists waits for a server as its writes do (before: a trial that
    started in a restart failed for good, `cannot be opened`, and three such ended the sweep), and
    after the allowance fails with TrackingUnavailable, which the sweep retries, not a ConfigError;
    a local store's error is still refused at once."""
    from omegaconf import OmegaConf

    from sweep.config import ConfigError
    from sweep.tracking import store

    lookup = failing(2, DOWN, result=SimpleNamespace(experiment_id="7", tags=store.EXPERIMENT_KIND))
    monkeypatch.setattr(mlflow, "MlflowClient", lambda tracking_uri=None: SimpleNamespace(
        get_experiment_by_name=lambda name: lookup()))
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: None)
    def tracking(**kwargs):
        return OmegaConf.create({"uri": "http://127.0.0.1:5000", "experiment": "e", "outage_seconds": 60} | kwargs)
    assert store.open_experiment(tracking()) == "7" and lookup.calls == 3
    lookup = failing(99, DOWN)
    with pytest.raises(outage.TrackingUnavailable, match="calling get_experiment_by_name"):
        store.open_experiment(tracking(outage_seconds=3))
    lookup = failing(99, sqlalchemy.exc.OperationalError("SELECT", {}, Exception("unable to open database file")))
    monkeypatch.setattr(store, "init_store", lambda uri: None)
    with pytest.raises(ConfigError, match="cannot be opened"):
        store.open_experiment(tracking(uri="sqlite:////nowhere/mlflow.db"))
    assert lookup.calls == 1

    started = failing(2, DOWN, result=SimpleNamespace(info=SimpleNamespace(run_id="0" * 32)))
    monkeypatch.setattr(mlflow, "start_run", lambda **kwargs: started())
    monkeypatch.setattr(lifecycle, "system_metrics", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(lifecycle, "sending_curves", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(lifecycle, "_close", lambda *a, **kw: None)
    with lifecycle.mlflow_run("7", "run", {}, outage_seconds=60) as run:
        assert run.info.run_id == "0" * 32 and started.calls == 3


def test_a_storage_call_waits_for_the_database_and_remembers_the_outage(pauses, caplog):
    caplog.set_level(logging.WARNING)
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    method = failing(2, lost)
    call = storage._retried(lambda self: method())
    self = SimpleNamespace(retry_seconds=60, outage_started=None, reconnected_at=None)
    assert call(self) == "done" and method.calls == 3 and pauses == [0.5, 1.0]
    assert self.outage_started is None and self.reconnected_at is not None  # (recently_unreachable reads it)
    assert "the study database is unreachable while calling" in helper_lines(caplog)[0]
    method = failing(1, sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("unique")))
    self = SimpleNamespace(retry_seconds=60, outage_started=None, reconnected_at=None)
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        call(self)
    assert method.calls == 1 and self.outage_started is None


def test_linking_a_dataset_tries_again_when_another_run_inserts_it_at_once(monkeypatch, pauses):
    log_input = failing(1, mlflow.exceptions.MlflowException('duplicate key value violates unique constraint "dataset_pk"'))
    monkeypatch.setattr(mlflow, "log_input", lambda dataset, context: log_input())
    records.log_input(object(), "training")
    assert log_input.calls == 2 and pauses == [0.5]
    log_input = failing(99, mlflow.exceptions.MlflowException("down"))
    with pytest.raises(mlflow.exceptions.MlflowException):
        records.log_input(object(), "training")
    assert log_input.calls == 4 and pauses[1:] == [0.5, 1.0, 2.0]  # (the pauses that fit in its 3 s, unslept)


def test_a_sweep_whose_trial_found_no_tracking_server_waits_for_it_then_stops_in_one_line(monkeypatch, pauses):
    """After a trial failed for want of the server, the sweep waits for it (through the same patient
    client) before it runs the next trial; still away: it stops with one line naming how to resume,
    instead of failing and queueing trial after trial against a server that is gone."""
    from sweep.study.optuna_sweeper import OptunaSweeper, SweepFailedError

    listed = failing(2, DOWN)
    monkeypatch.setattr(mlflow, "MlflowClient", lambda tracking_uri=None: SimpleNamespace(
        search_experiments=lambda max_results: listed()))
    sweeper = OptunaSweeper.__new__(OptunaSweeper)
    sweeper.client = outage.PatientClient(60)
    study = SimpleNamespace(study_name="s")
    sweeper._wait_for_tracking(study)
    assert listed.calls == 3 and pauses
    listed = failing(99, DOWN)
    sweeper.client = outage.PatientClient(3)
    with pytest.raises(SweepFailedError, match=r"has not answered for 3 s .* rerun the same command to resume study 's'"):
        sweeper._wait_for_tracking(study)
