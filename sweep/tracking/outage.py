"""A job outlives its tracking server's outage: it trains on, keeps what it logs, and waits for the
server before its run ends.

Why our own: MLflow's client retries a request for about four minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
with backoff), blocking the training loop meanwhile, then raises and the job fails with its steps
trained and unrecorded; its async logging sends from a thread but drops a batch that failed. Here:
- training curves (a run's step metrics) are sent by a thread of their own (`CurveSender`): each
  point kept, in order and with the time it was measured, and sent again with backoff until the
  server takes it; training never waits for the server;
- the run's other writes (scores, tags, tables, the adapter) wait for the server (`patiently`);
- a run ends only after its curve's backlog is sent, so a FINISHED run has its whole curve;
- when the server has not answered for `tracking.outage_seconds`, the job fails with
  `TrackingUnavailable` (its run recorded FAILED once the server answers: lifecycle.py) and an
  Optuna sweep queues its trial again, as it does a dead worker's.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import threading
import time
from contextlib import contextmanager

from sweep.runtime.retry import first_line, retry

log = logging.getLogger(__name__)
TRACKING = "the tracking server"  # who the retry's warnings name
OUTAGE_SECONDS = 900.0  # how long a job trains on and waits for a tracking server that does not answer
BATCH = 1000            # metrics per request (MLflow's log_batch limit)
MAX_DELAY = 10.0        # seconds between two attempts, at most (a connection attempt is cheap)


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer for the job's whole allowance (`tracking.outage_seconds`)."""


# The HTTP statuses MLflow's own client retries (mlflow.utils.request_utils): with its retries on they
# reach us as a RetryError past them; with them off (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0) as the server's
# answer, e.g. a 503 TEMPORARILY_UNAVAILABLE or an HTML 500 from the auth app while its database is away
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
PAGE_STATUS = re.compile(r"API request to endpoint \S+ failed with error code (\d+) ")  # (MLflow's words, non-JSON)


def answered_status(e: BaseException) -> int | None:
    """The HTTP status of a tracking server's error answer (None when `e` is not one)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(e, RestException):
        return e.get_http_status_code()
    match = PAGE_STATUS.match(str(e)) if isinstance(e, MlflowException) else None
    return int(match.group(1)) if match else None


def unreachable(e: BaseException) -> bool:
    """Whether an error means the tracking store could not be reached (worth waiting for), as
    opposed to a refused write, which would fail again: a connection refused or reset, a timeout,
    a proxy's 502/503 past MLflow's retries, a server answering what MLflow's client retries (its
    database away: raised at once when those retries are off), a database-backed store's lost connection."""
    import requests
    import sqlalchemy.exc

    seen = 0
    while e is not None and seen < 10:  # MLflow raises its own exception inside the except of the cause
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError, sqlalchemy.exc.OperationalError,
                          sqlalchemy.exc.InterfaceError, ConnectionError, TimeoutError)):
            return True
        if answered_status(e) in TRANSIENT_STATUSES:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def gave_up(seconds: float, what: str, e: BaseException) -> TrackingUnavailable:
    return TrackingUnavailable(f"the tracking server has not answered for {seconds:.0f} s while {what} "
                               f"({first_line(e)}); start it again (or raise tracking.outage_seconds), then rerun")


def patiently(write, what: str, seconds: float | None = None):
    """`write()`, tried again with backoff while the store cannot be reached, for up to `seconds` (the
    active run's allowance by default); then TrackingUnavailable. Other errors are raised at once."""
    seconds = allowance() if seconds is None else seconds
    return retry(write, transient=unreachable, seconds=seconds, who=TRACKING, what=what, most=MAX_DELAY,
                 give_up=lambda e: gave_up(seconds, what, e))


class PatientClient:
    """An MlflowClient whose every call waits for a tracking server that cannot be reached (`patiently`,
    up to `seconds`; then TrackingUnavailable): for the bookkeeping around runs (a sweep's parent run,
    opening the experiment, closing orphans), which must ride out a restart as the runs' writes do."""

    def __init__(self, seconds: float, tracking_uri: str | None = None):
        import mlflow

        self._client, self._seconds = mlflow.MlflowClient(tracking_uri=tracking_uri), seconds

    def __getattr__(self, name: str):
        call = getattr(self._client, name)
        if not callable(call):
            return call
        return functools.wraps(call)(lambda *args, **kwargs: patiently(
            lambda: call(*args, **kwargs), f"calling {name}", self._seconds))


class Abandoned(Exception):
    """The job stopped waiting for the curve's sender (close() ran out of time)."""


class CurveSender:
    """Sends one run's step metrics from a thread of its own (see the module docstring)."""

    def __init__(self, run_id: str, seconds: float):
        self.run_id, self.seconds = run_id, seconds
        self.backlog: collections.deque = collections.deque()
        self.error: BaseException | None = None  # what the sender met: raised in the job's thread
        self.cond = threading.Condition()
        self.stopping = self.abandoned = False
        self.thread = threading.Thread(target=self._send, name=f"curves-{run_id[:8]}", daemon=True)
        self.thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if self.error is not None:
            raise self.error
        now = int(time.time() * 1000)
        with self.cond:
            self.backlog.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
            self.cond.notify()

    def _send(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        while True:
            with self.cond:
                while not self.backlog and not self.stopping:
                    self.cond.wait()
                if not self.backlog:
                    return
                batch = list(self.backlog)[:BATCH]
            try:
                retry(functools.partial(self._send_batch, client, batch), transient=unreachable, seconds=self.seconds,
                      who=TRACKING, what="sending the training curve (its points are kept; training goes on)",
                      most=MAX_DELAY, sleep=self._pause,
                      give_up=lambda e: gave_up(self.seconds, "sending the training curve", e))
            except Abandoned:
                return
            except Exception as e:  # noqa: BLE001  (kept for the job's thread)
                self.error = e
                return
            with self.cond:
                for _ in batch:
                    self.backlog.popleft()

    def _send_batch(self, client, batch: list) -> None:
        if self.abandoned:
            raise Abandoned
        client.log_batch(self.run_id, metrics=batch)

    def _pause(self, seconds: float) -> None:
        with self.cond:
            self.cond.wait(seconds)  # (woken early only to stop)

    def close(self, seconds: float) -> bool:
        """Wait up to `seconds` for the backlog to be sent, then stop; whether all of it was."""
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(seconds)
        self.abandoned = self.thread.is_alive()  # (it gives up at its next attempt)
        return not self.backlog and self.error is None


SENDERS: dict[str, CurveSender] = {}  # the open runs of this process: run id -> its curve's sender


def allowance() -> float:
    """The active run's tracking.outage_seconds (OUTAGE_SECONDS outside a run)."""
    import mlflow

    run = mlflow.active_run()
    sender = SENDERS.get(run.info.run_id) if run else None
    return sender.seconds if sender else OUTAGE_SECONDS


def hand_to_sender(metrics: dict[str, float], step: int) -> bool:
    """Hand step metrics to the active run's sender; False when the run has none (log them directly)."""
    import mlflow

    run = mlflow.active_run()
    sender = SENDERS.get(run.info.run_id) if run else None
    if sender is None:
        return False
    sender.log(metrics, step)
    return True


STOP_SECONDS = 10.0  # how long a run that failed or was interrupted waits for its curve's backlog


@contextmanager
def sending_curves(run_id: str, seconds: float = OUTAGE_SECONDS):
    """The run's curve sender while the block runs; the backlog sent before the block ends
    (TrackingUnavailable when it cannot be), or, when the block raised, for up to STOP_SECONDS."""
    sender = SENDERS[run_id] = CurveSender(run_id, seconds)
    try:
        yield sender
    except BaseException:
        sender.close(STOP_SECONDS)
        raise
    else:
        if not sender.close(seconds):
            raise sender.error or TrackingUnavailable(
                f"the tracking server did not take the training curve within {seconds:.0f} s; start it again "
                "(or raise tracking.outage_seconds) and rerun the job")
    finally:
        SENDERS.pop(run_id, None)
