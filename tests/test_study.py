"""Studies shared by workers: per-trial seeds, trials handed over by value, heartbeats."""

import time

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from sweep.config import PROJECT_ROOT, ConfigError
from sweep.study import trials
from sweep.study.budget import settled_trials, stand_down_queued_retries
from sweep.study.search import make_pruner, make_sampler, parse_search_space, trial_seed
from sweep.study.storage import STORAGE_ENV, HeartbeatThread, fail_stale, make_storage, requeue

SPACE = parse_search_space(["lora.r=choice(2,8,16)", "train.lr=tag(log,interval(1e-5,1e-2))"])


def first_params(storage, seed: int, workers: int, n: int) -> list[dict]:
    """`workers` handles on one study, each with its own sampler (as separate processes would have),
    asking in turn."""
    handles = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True, direction="maximize",
                                   sampler=make_sampler("tpe", seed, SPACE)) for _ in range(workers)]
    asked = [handles[i % workers].ask(SPACE.distributions) for i in range(n)]  # all RUNNING at once
    return [t.params for t in asked]


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "gp"])
def test_concurrent_workers_seeded_alike_draw_different_trials(sampler):
    space = parse_search_space(["lora.r=choice(2,8,16)", "train.lr=choice(1e-4,1e-3,1e-2)"]) if sampler == "grid" \
        else SPACE
    storage = optuna.storages.InMemoryStorage()
    handles = [optuna.create_study(study_name="s", storage=storage, load_if_exists=True, direction="maximize",
                                   sampler=make_sampler(sampler, 0, space)) for _ in range(3)]
    params = [handles[i].ask(space.distributions).params for i in range(3)]
    assert len({tuple(sorted(p.items())) for p in params}) == 3, params


def test_a_sweep_is_reproducible_from_its_seed_whatever_the_number_of_workers():
    one = first_params(optuna.storages.InMemoryStorage(), seed=7, workers=1, n=4)
    three = first_params(optuna.storages.InMemoryStorage(), seed=7, workers=3, n=4)
    other = first_params(optuna.storages.InMemoryStorage(), seed=8, workers=1, n=4)
    assert one == three and one != other
    assert trial_seed(7, 0) != trial_seed(7, 1) and trial_seed(7, 0) == trial_seed(7, 0)


def test_a_job_reattaches_to_its_trial_from_the_overrides_and_the_environment(tmp_path, monkeypatch):
    url = f"{tmp_path}/optuna.journal"
    study = optuna.create_study(study_name="st", storage=make_storage(url), direction="maximize",
                                pruner=make_pruner("median"))
    for value in (0.8, 0.9):
        t = study.ask()
        t.report(value, 10)
        study.tell(t, value)
    trial = study.ask(SPACE.distributions)
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=trials.overrides("st", trial.number, "abc123", ["sst2/acc"], "median"))
        plain = compose("config")
    assert trials.attach(plain) is None  # not in a study
    with pytest.raises(ConfigError, match=f"\\${STORAGE_ENV} is not"):
        trials.attach(cfg)
    monkeypatch.setenv(STORAGE_ENV, url)
    ctx = trials.attach(cfg)
    assert ctx.trial.number == trial.number and ctx.trial.params == trial.params  # same trial, nothing re-sampled
    assert ctx.tags() == {"optuna.study_name": "st", "optuna.trial_number": "2", "mlflow.parentRunId": "abc123"}
    assert ctx.pruning and ctx.objectives == ["sst2/acc"]
    ctx.trial.report(0.1, 10)  # reported by the job's handle, seen by the sweeper's
    assert study.trials[trial.number].intermediate_values == {10: 0.1}
    assert ctx.trial.should_prune()  # the job's handle prunes with the study's pruner


def test_a_trial_whose_worker_stopped_beating_is_failed_and_queued_again(tmp_path):
    storage = make_storage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="hb", storage=storage, direction="maximize")
    alive, dead = study.ask(SPACE.distributions), study.ask(SPACE.distributions)
    with HeartbeatThread(storage, [alive._trial_id]):
        storage.record_heartbeat(dead._trial_id)  # beat once, then its worker "died"
        time.sleep(3.5)
        fail_stale(study)  # what any other worker does while it waits
        states = [t.state for t in study.get_trials()]
    assert states[:2] == [TrialState.RUNNING, TrialState.FAIL]
    [queued] = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == dead.params and queued.user_attrs["retry_of"] == dead.number
    fail_stale(study)  # a second worker finds nothing more to fail
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/o.db", "{tmp}/o.journal"])
def test_a_retry_queued_after_the_budget_was_met_stands_down_and_a_users_queued_configuration_waits(tmp_path, url):
    """The race of test_team's three hosts: a worker asked a new trial while another queued a dead
    worker's trial again; the new one met the budget, and the retry would wait for ever."""
    study = optuna.create_study(storage=make_storage(url.format(tmp=tmp_path)), direction="maximize")
    done, dead, raced = (study.ask(SPACE.distributions) for _ in range(3))
    study.tell(done, 0.5)
    study.tell(dead, state=TrialState.FAIL)
    requeue(study, study.trials[dead.number])  # (what fail_stale does)
    study.tell(raced, 0.6)
    study.enqueue_trial({"lora.r": 4, "train.lr": 1e-3})  # a user's configuration for a later run
    assert len(settled_trials(study)) == 2  # the budget of 2 is met
    [retry] = [t.number for t in study.trials if t.user_attrs.get("retry_of") == dead.number]
    assert stand_down_queued_retries(study) == [retry]
    after = study.get_trials()
    assert after[retry].state == TrialState.FAIL and after[retry].user_attrs["surplus"]
    assert [t.number for t in settled_trials(study)] == [done.number, raced.number]  # still met, not exceeded
    assert [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))] == [
        {"lora.r": 4, "train.lr": 1e-3}]
    assert stand_down_queued_retries(study) == []


def test_the_journal_file_has_no_heartbeat_so_beating_is_a_no_op(tmp_path):
    storage = make_storage(f"{tmp_path}/o.journal")
    study = optuna.create_study(storage=storage)
    with HeartbeatThread(storage, [study.ask()._trial_id]) as beat:
        assert not beat._thread.is_alive()
    fail_stale(study)
    assert study.trials[0].state == TrialState.RUNNING


def test_a_dead_run_another_worker_closed_first_does_not_stop_the_sweep(tmp_path):
    """Two live workers may close the same dead trial's run at once; on PostgreSQL the second's tag
    write fails on a unique key. Forced here: the store refuses the first run's writes; that run is
    left to the other worker and the next dead run is still closed."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sweep.study import study_runs

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    runs = [client.create_run(experiment_id, tags={"optuna.study_name": "s", "optuna.trial_number": str(n)})
            for n in (0, 1)]
    taken = runs[0].info.run_id

    class RacedClient(mlflow.MlflowClient):
        def set_tag(self, run_id, key, value, **kw):
            if run_id == taken:
                raise MlflowException("duplicate key value violates unique constraint \"tag_pk\"")
            return super().set_tag(run_id, key, value, **kw)

    raced = RacedClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    study_runs.close_dead_runs(raced, "e", "s", [0, 1])
    assert client.get_run(runs[1].info.run_id).info.status == "KILLED"
    assert client.get_run(runs[1].info.run_id).data.tags["optuna.state"] == "FAIL"
    assert client.get_run(taken).info.status == "RUNNING"  # the other worker's to close


def test_a_job_waits_for_a_restarting_study_database_where_a_command_refuses_it_at_once(monkeypatch):
    """A command opening a study whose database does not answer has a bad URL (one line, at once); a
    trial's job (trials.attach, `wait_seconds`) joins a study its sweeper has just written to, so the
    same error there is a restart to wait for (the chaos test's jobs met one while PostgreSQL stopped)."""
    import sqlalchemy.exc

    from sweep.study import storage

    attempts = []

    class Restarting:
        def __init__(self, url, **kwargs):
            attempts.append(url)
            if len(attempts) < 3:
                raise sqlalchemy.exc.OperationalError("connect", {}, Exception("terminating connection due to "
                                                                                "administrator command"))

    monkeypatch.setattr(storage, "ResilientRDBStorage", Restarting)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    url = "postgresql+psycopg://sweeper@127.0.0.1:9/optuna"
    with pytest.raises(ConfigError, match="cannot be opened"):
        storage.make_storage(url)
    assert len(attempts) == 1
    attempts.clear()
    assert type(storage.make_storage(url, wait_seconds=60)) is Restarting and len(attempts) == 3
