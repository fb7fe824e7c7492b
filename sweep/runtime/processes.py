"""Which process a run or trial belongs to, whether that process still lives, and stopping the
processes this one started.

A SIGKILLed or crashed process runs no cleanup, so what it left RUNNING (an MLflow run, an Optuna
trial) is closed by the next process on the same host that finds its owner gone. The owner is
recorded as host, PID namespace (`namespace`), pid and the pid's start time, so a pid the system
has reused since is not mistaken for the owner, and neither is a pid of another container or
cloned machine that shares the host name: only a process that sees the same pids checks them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

from sweep.vocabulary import HOST, PID, PID_NAMESPACE, PID_START

STOP_SECONDS = 60.0  # how long an interrupted process waits for those it started to close their runs
log = logging.getLogger(__name__)


def host() -> str:
    return socket.gethostname()


def namespace() -> str:
    """Which pids this process sees: its machine's boot (cloned machines differ) and its PID
    namespace (containers differ), hashed short; "" where /proc does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot} {pid_ns}".encode()).hexdigest()[:12]


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), None if there is no such
    process or it is a zombie (dead, not yet reaped by its parent: a sweep's killed worker); ""
    where /proc is not available (then only existence can be checked)."""
    if not Path("/proc/self/stat").exists():
        return "" if _exists(pid) else None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # state (field 3) and start time (field 22)


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    return start_time(pid) is not None


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the owner of a run."""
    return {HOST: host(), PID_NAMESPACE: namespace(), PID: str(os.getpid()), PID_START: start_time(os.getpid()) or ""}


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether the process these tags name (owner_tags of another run) is gone. Only the processes
    of this host and PID namespace can be checked (a run without the namespace tag cannot be); a
    tag that is not a pid (a store is untrusted) counts as alive."""
    pid = tags.get(PID, "")
    if tags.get(HOST) != host() or tags.get(PID_NAMESPACE) != namespace() or not pid.isdigit():
        return False
    now = start_time(int(pid))
    return now is None or (bool(tags.get(PID_START)) and bool(now) and now != tags[PID_START])


def stop(workers: list[subprocess.Popen], sig: int, timeout: float = STOP_SECONDS) -> None:
    """Pass the signal on to the processes this one started (a sweep's workers, a job's process: a
    SIGTERM sent to this process alone does not reach them) and wait for them to record their runs
    as KILLED; kill those still alive after `timeout` seconds."""
    for w in workers:
        if w.poll() is None:
            w.send_signal(sig)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop within %.0f s of the signal: killed", w.pid, timeout)
            w.kill()
