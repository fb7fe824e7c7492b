"""Which process a run or trial belongs to, and whether that process still lives.

A SIGKILLed or crashed process runs no cleanup, so what it left RUNNING (an MLflow run, an Optuna
trial) is closed by the next process on the same host that finds its owner gone. The owner is
recorded as host, pid and the pid's start time, so a pid the system has reused since is not
mistaken for the owner.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def host() -> str:
    return socket.gethostname()


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
    return {"host": host(), "pid": str(os.getpid()), "pid_start": start_time(os.getpid()) or ""}


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether the process these tags name (owner_tags of another run) is gone. Only this host's
    processes can be checked; a tag that is not a pid (a store is untrusted) counts as alive."""
    pid = tags.get("pid", "")
    if tags.get("host") != host() or not pid.isdigit():
        return False
    now = start_time(int(pid))
    return now is None or (bool(tags.get("pid_start")) and bool(now) and now != tags["pid_start"])
