"""Ctrl-C and SIGTERM: raised as exceptions so that a run is recorded as KILLED, but never in the
middle of a store write (`atomic_write`): a write cut in half keeps SQLite's lock, and the run
could not be closed afterwards. The state is this process's own (signals are per process)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the run is recorded as KILLED before the process exits."""


_writing = 0               # > 0 while an MLflow write is under way
_pending: list[int] = []   # signals that arrived during one
_received: list[int] = []  # every Ctrl-C or SIGTERM this process has had


def _on_signal(signum, frame):
    _received.append(signum)
    if _writing:
        _pending.append(signum)  # raised when the write is done
        return
    raise KeyboardInterrupt("interrupted") if signum == signal.SIGINT else Terminated(f"received signal {signum}")


def signals_received() -> int:
    return len(_received)


def interrupted(e: BaseException, signals_before: int) -> bool:
    """Whether `e` ends the work because of Ctrl-C or SIGTERM: it is the interruption, was raised
    while one unwound (a library that wraps it, a cleanup that failed on the way out), or a signal
    arrived since `signals_before` (a library that caught it and failed later). Such a run was
    stopped, not broken: it is KILLED, and its trial is queued again."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return signals_received() > signals_before


def interruption() -> KeyboardInterrupt:
    """The exception the last signal raises (for an interruption that reached us as another one)."""
    return KeyboardInterrupt("interrupted") if _received[-1:] == [signal.SIGINT] else Terminated("interrupted")


def install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM end the job promptly, but never in the middle of an MLflow write: a
    write cut in half keeps its SQLite lock, and the run could not be closed afterwards."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _on_signal)


@contextmanager
def atomic_write():
    global _writing
    _writing += 1
    try:
        yield
    finally:
        _writing -= 1
        if not _writing and _pending:
            signum = _pending.pop()
            _pending.clear()
            _on_signal(signum, None)
