"""The study's storage: opening it, riding out a database that restarts or drops connections,
and the heartbeats that let any worker fail and requeue a dead worker's trials.

Why our own layer over Optuna's RDBStorage: Optuna turns every SQLAlchemy error into a
StorageInternalError and retries nothing, and checks pooled connections before use only on MySQL;
a PostgreSQL restart then kills every worker at its next storage call (a trial it had finished is
never told). Here connections are pinged before use, calls that failed for want of a connection
are retried with backoff for up to `RETRY_SECONDS`, and right after such an outage (seen by this
process, or told by PostgreSQL's own start time) no worker takes another's trial for dead:
everyone's heartbeats are old then, not only the dead ones'.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import optuna

from sweep.config import ConfigError
from sweep.runtime.files import check_writable
from sweep.runtime.retry import first_line, retry
from sweep.runtime.secrets import redact
from sweep.vocabulary import retry_attrs

# The study storage URL travels to workers and jobs through this variable, never on a command
# line (`ps` would show its password); it is also where a user's shell names a shared study.
STORAGE_ENV = "OPTUNA_STORAGE"
JOURNAL = "optuna.journal"  # the embedded study storage's file, in the project folder (paths.root)
RETRY_SECONDS = 600.0     # how long a storage call waits for its database to come back
CONNECT_SECONDS = 10      # a database that does not answer a new connection in this time is unreachable
# ask/tell with a heartbeat is what we do on purpose (see HeartbeatThread); Optuna flags heartbeats,
# the matplotlib plots and some samplers as experimental: they are what we use.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)


def is_connection_error(e: BaseException) -> bool:
    """Whether a storage error means the database could not be reached (worth waiting for), as
    opposed to a refused write (a constraint, a finished trial), which would fail again."""
    import sqlalchemy.exc

    cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) else e
    return isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
        isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated)


def _retried(method):
    """A storage call that waits up to `retry_seconds` for its database (runtime/retry.py), keeping
    the outage's start and end for `recently_unreachable`."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        def attempt():
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if is_connection_error(e) and self.outage_started is None:
                    self.outage_started = time.monotonic()
                raise

        result = retry(attempt, transient=is_connection_error, seconds=self.retry_seconds, who="the study database",
                       what=f"calling {method.__name__}", first=0.5, most=15.0)
        if self.outage_started is not None:
            self.outage_started, self.reconnected_at = None, time.monotonic()
        return result
    return call


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose calls wait for a database that is restarting (see the module docstring).
    A missed heartbeat is not retried: the next beat is."""

    retry_seconds = RETRY_SECONDS
    outage_started: float | None = None
    reconnected_at: float | None = None

    def recently_unreachable(self, within: float) -> bool:
        """Whether the database was out of reach within the last `within` seconds: this process lost
        it, or (PostgreSQL) the server itself started since, which a process that made no call
        while it was down cannot otherwise tell."""
        if self.outage_started is not None:
            return True
        if self.reconnected_at is not None and time.monotonic() - self.reconnected_at < within:
            return True
        return self.engine.dialect.name == "postgresql" and self._server_uptime() < within

    @_retried
    def _server_uptime(self) -> float:
        """Seconds since the database server started."""
        import sqlalchemy

        with self.engine.connect() as connection:
            return float(connection.execute(sqlalchemy.text(
                "SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")).scalar_one())


for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
              "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
              "get_trial_id_from_study_id_trial_number", "set_trial_state_values", "set_trial_intermediate_value",
              "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials",
              "get_best_trial", "_get_stale_trial_ids"):
    setattr(ResilientRDBStorage, _name, _retried(getattr(optuna.storages.RDBStorage, _name)))


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the parameters of a trial whose worker died, so that another worker runs them again
    (`retry_of` marks the copy; the failed original then does not count towards n_trials)."""
    study.enqueue_trial(trial.params, user_attrs=retry_attrs(trial.number), skip_if_exists=False)


def engine_kwargs(url: str) -> dict:
    """Pooled connections are pinged before use (a restarted database closed them); a new
    connection gives up after CONNECT_SECONDS instead of the operating system's minutes."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": CONNECT_SECONDS}
    return kwargs


def make_storage(url: str, heartbeat_interval: int = 60, grace_period: int = 180, wait_seconds: float = 0.0):
    """An RDB URL (postgresql://..., sqlite:///...) or a journal file path (`*.log`/`*.journal`).

    The journal file is the local default: Optuna's file backend locks it, so several local
    processes can share one study without SQLite's "database is locked" errors. RDB storages get
    a heartbeat: a trial whose worker stopped beating for `grace_period` seconds is failed by any
    other worker and its parameters queued again (`fail_stale`). A database out of reach is a bad
    URL to a command that opens it first (one line, at once), and an outage to be waited for, up to
    `wait_seconds`, to a job joining a trial its sweeper has just made there.
    """
    if "://" in url:
        import sqlalchemy.exc

        def connect():
            with warnings.catch_warnings():  # (a filter set at import may have been reset by a library since)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return ResilientRDBStorage(url, engine_kwargs=engine_kwargs(url), heartbeat_interval=heartbeat_interval,
                                           grace_period=grace_period, heartbeat_stale_trial_callback=requeue)

        try:
            if not wait_seconds:
                return connect()
            return retry(connect, transient=is_connection_error, seconds=wait_seconds, who="the study database",
                         what="opening the study", first=0.5, most=15.0)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
            reason = first_line(e)
            raise ConfigError(f"hydra.sweeper.storage={redact(url)!r} cannot be opened ({redact(reason)}); start the "
                              f"database (`make services`) or fix the URL, or leave it unset for the local "
                              f"journal file") from None
    check_writable("hydra.sweeper.storage", Path(url).parent)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(url)
    return optuna.storages.JournalStorage(backend)


def unopened_journal(url: str) -> bool:
    """A journal file that does not exist yet: opening it would create it (an RDB URL: False)."""
    return "://" not in url and not Path(url).is_file()


def storage_url(configured: str | None, default: str) -> str:
    """The sweeper's storage: configured, else the environment's OPTUNA_STORAGE, else the default."""
    return configured or os.environ.get(STORAGE_ENV) or default


def has_heartbeat(storage) -> bool:
    return isinstance(storage, optuna.storages._heartbeat.BaseHeartbeat) and bool(storage.get_heartbeat_interval())


def backend_of(storage):
    """The storage under Optuna's cache (study._storage wraps an RDBStorage in a _CachedStorage)."""
    return getattr(storage, "_backend", storage)


def fail_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose worker stopped beating (any host), queueing them again; not
    within a grace period of the database's outage or restart: then every worker's beats are old,
    and the live ones need that long to beat again."""
    if not has_heartbeat(study._storage):
        return
    backend = backend_of(study._storage)
    if isinstance(backend, ResilientRDBStorage) and backend.recently_unreachable(backend.grace_period):
        return
    optuna.storages.fail_stale_trials(study)


class HeartbeatThread:
    """Beats for the running trials of this worker while their jobs run.

    Optuna beats only inside `study.optimize`, which runs the objective in this process; the
    sweeper runs trials with ask/tell and hands them to a Hydra launcher (which may run them in
    other processes or on other hosts), so it beats for them itself, through the storage's own
    `record_heartbeat`."""

    def __init__(self, storage, trial_ids: list[int]) -> None:
        self.storage, self.trial_ids = storage, trial_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a storage hiccup: the next beat retries; the grace period covers it
                    pass
            if self._stop.wait(interval):
                return

    def __enter__(self) -> HeartbeatThread:
        if has_heartbeat(self.storage):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
