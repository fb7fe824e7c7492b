"""The fork server (sweep/launcher/fork_server.py) under the fresh-process launcher: jobs forked from a
process that imported the libraries once, with the spawn path kept for when forking is unsafe.
The launcher's guarantees (SIGTERM passed on, a SIGKILLed job failing alone, flat memory, pruning)
are checked through it by tests/test_memory.py, tests/test_reliability.py and
tests/test_optuna_e2e.py, which run the default launcher."""

import os
import signal
import subprocess
import threading
import time

import pytest

from sweep.launcher import fork_server
from sweep.launcher.fresh_process import FreshProcessLauncher


def test_forking_is_unsafe_once_a_thread_runs():
    """(The server itself is single-threaded: the test below gets forked jobs from it, not None.)"""
    threads = threading.active_count()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert fork_server.unsafe_to_fork() == f"{threads} threads started by the imports"
    finally:
        stop.set()
        worker.join()


def test_a_server_that_cannot_fork_makes_the_launcher_spawn(tmp_path):
    class Refusing:
        def alive(self):
            return True

        def start(self, payload, result, env):
            return None

    launcher = FreshProcessLauncher(fork=True)
    launcher.server = Refusing()
    assert launcher._forked(tmp_path / "p", tmp_path / "r") is None and launcher.fork is False
    assert FreshProcessLauncher(fork=False)._forked(tmp_path / "p", tmp_path / "r") is None


class FakeServer:
    def __init__(self, alive=True):
        self.is_alive, self.closed = alive, False
        self.process = subprocess.CompletedProcess([], returncode=-signal.SIGKILL)

    def alive(self):
        return self.is_alive

    def start(self, payload, result, env):
        return "forked"

    def close(self):
        self.closed = True


def test_one_server_serves_the_sweep_a_dead_one_is_replaced_and_a_failed_launch_closes_it(monkeypatch, tmp_path):
    """The server outlives a launch (an Optuna sweep launches each batch of trials apart): only a
    server that has exited is replaced, and a launch that raised (a job interrupted mid-way may still
    owe its reply) closes it, so the next launch starts afresh."""
    from sweep.launcher import fresh_process

    started = []
    monkeypatch.setattr(fresh_process, "warm_tracking_imports", lambda: None)
    monkeypatch.setattr(fresh_process.FreshProcessLauncher, "start_server",
                        lambda self: (started.append(1), setattr(self, "server", FakeServer())))
    launcher = FreshProcessLauncher(fork=True)
    first = launcher.server = FakeServer()
    assert launcher._forked(tmp_path / "p", tmp_path / "r") == "forked" and launcher.server is first and not started
    first.is_alive = False
    assert launcher._forked(tmp_path / "p", tmp_path / "r") == "forked"
    assert first.closed and len(started) == 1 and launcher.server is not first

    second = launcher.server

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(launcher, "_launch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        launcher.launch([["lora.r=2"]], 0)
    assert second.closed and launcher.server is None


def test_the_launcher_starts_its_server_without_importing_mlflow_first():
    """The sweep's own process imports the launcher to start the server; MLflow (4 s of imports) is
    the server's and the jobs' business, loaded in the sweep's process only once a job runs."""
    import sys

    code = "import sys, sweep.launcher.fresh_process; print(sorted({'mlflow', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(not fork_server.can_fork(), reason="fork is Linux-only here")
def test_a_server_never_asked_for_a_job_is_killed_not_waited_for():
    """A sweep that ends before its first job (an Optuna study already complete) does not wait for the
    server's 15 s of imports to finish."""
    server = fork_server.ForkServer(os.environ | {"PYTHONPATH": os.getcwd()})
    server.close()
    assert server.process.returncode == -signal.SIGKILL


@pytest.mark.skipif(not fork_server.can_fork(), reason="fork is Linux-only here")
def test_the_server_reports_each_childs_pid_and_exit_status(tmp_path):
    """Payloads that are not jobs: the child fails alone (status 1), a child SIGKILLed mid-job is
    reported with the signal, and the server lives on for the next job and ends with its pipe."""
    server = fork_server.ForkServer(os.environ | {"PYTHONPATH": os.getcwd()})
    try:
        broken = server.start(tmp_path / "missing.pkl", tmp_path / "r1", dict(os.environ))
        assert broken is not None, "the server refused to fork"
        assert broken.pid != server.process.pid and broken.wait(timeout=300) == 1
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)  # (reading it blocks the child until it is killed)
        blocked = server.start(fifo, tmp_path / "r2", dict(os.environ))
        time.sleep(0.5)
        assert blocked.poll() is None
        blocked.kill()
        assert blocked.wait(timeout=60) == -signal.SIGKILL
        assert server.start(tmp_path / "missing.pkl", tmp_path / "r3", dict(os.environ)).wait(timeout=60) == 1  # still serving
    finally:
        server.close()
    assert server.process.returncode == 0


@pytest.mark.e2e
@pytest.mark.parametrize("fork", ["true", "false"])
def test_a_module_in_the_folder_a_multirun_starts_from_never_runs(tmp_path, tracking, fork):
    """Jobs import from the checkout and the environment only, wherever the sweep starts: a planted
    `sacrebleu.py` (lm-eval imports sacrebleu) never runs, and a plain folder named `torch` breaks
    nothing, in the fork server and in a job's own interpreter (hydra.launcher.fork=false)."""
    from tests import forked
    from tests.conftest import ROOT, TINY, clean_env

    marker = tmp_path / "planted-module-ran"
    (tmp_path / "sacrebleu.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")
    (tmp_path / "torch").mkdir()
    tiny = [a for a in TINY if not a.startswith("hydra/launcher")]
    p = forked.run([str(ROOT / "sweep.py"), "-m", *tiny, *tracking, "lora.r=2", f"hydra.launcher.fork={fork}"],
                   tmp_path, clean_env(), 900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not marker.exists() and "lora-r2-a16-qkvo" in p.stdout
