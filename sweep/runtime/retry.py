"""One way to try again. Five places wait for something that may come back: a job's writes and its
training curve to a tracking server that is away (tracking/outage.py), closing a run
(tracking/lifecycle.py), a study database that is restarting (study/storage.py) and a dataset
insert racing another run's (tracking/records.py). Each keeps its own bounds and its own notion of a
transient error, deliberately; the loop, the backoff and the two lines a user reads (when it starts
failing, when it answers again) are here, once.

Why a module over tenacity: tenacity gives the loop, the stop, the exponential wait and the sleep
hook (the curve's thread sleeps on its condition, to be woken to stop); what is ours is the two log
lines (redacted, said once per outage, not once per attempt) and raising the caller's own error
when it gives up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from sweep.runtime.secrets import redact

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_LINE = 300  # characters of an error's first line in a message


def first_line(e: BaseException) -> str:
    """An error's first line, redacted and at most MAX_LINE characters (its type when it has no
    text): what a one-line message says of it."""
    text = redact(str(e)).strip()
    return text.splitlines()[0][:MAX_LINE] if text else type(e).__name__


def retry(call: Callable[[], T], *, transient: Callable[[BaseException], bool], seconds: float, who: str,
          what: str, first: float = 1.0, most: float = 10.0, sleep: Callable[[float], None] | None = None,
          give_up: Callable[[BaseException], BaseException] | None = None, trouble: str = "is unreachable",
          level: int = logging.WARNING) -> T:
    """`call()`, tried again while it raises a `transient` error, `first`, 2 x `first`, ... seconds
    apart (at most `most`; `sleep` waits, time.sleep by default), as long as the next attempt starts
    within `seconds` of the first; any other error is raised at once. Out of time: `give_up(error)`
    is raised (the error itself when None). "`who` `trouble` while `what`": the message (at `level`)
    said once when it starts failing, and once when it answers again."""
    failing_since: list[float] = []
    sleep = sleep or (lambda pause: time.sleep(pause))  # (looked up at each pause: tests replace it)

    def attempt() -> T:
        result = call()
        if failing_since:
            log.log(level, "%s answers again after %.0f s", who, time.monotonic() - failing_since[0])
        return result

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if not failing_since:
            failing_since.append(time.monotonic())
            log.log(level, "%s %s while %s (%s); trying again for up to %.0f s", who, trouble, what,
                    first_line(state.outcome.exception()), seconds)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(transient), reraise=True, sleep=sleep,
                                 stop=tenacity.stop_before_delay(seconds), before_sleep=before_sleep,
                                 wait=tenacity.wait_exponential(multiplier=first, min=first, max=most))
    try:
        return retrying(attempt)
    except Exception as e:
        if give_up is not None and transient(e):
            raise give_up(e) from None
        raise
