"""A Hydra launcher that runs each job of a multirun in a new Python process
(`hydra/launcher=fresh_process`), one after another.

Why our own: Hydra's basic launcher runs every job in the sweep's own process, where native
memory (allocator heaps, kernel caches, libraries' own pools) that a job leaves behind adds up
over hundreds of trials, and a job killed for memory takes the whole sweep with it. joblib's
launcher reuses its worker processes, so the same holds there. Here a job's memory is returned
to the system when its process exits (the sweep's memory stays flat by construction), and a job
whose process dies (SIGKILL, the kernel's out-of-memory killer, a crash in native code) is
recorded as FAILED while the sweep goes on.

A new interpreter pays seconds of imports (torch, transformers, lm-eval) per job, so by default
(`hydra.launcher.fork=true`) the jobs are forked from a server that imported them once
(sweep/launcher/fork_server.py, started once per sweep): the same fresh process per job, started in
well under a second once the server has imported them.
`fork=false`, or a server that cannot fork safely, spawns a new interpreter per job.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    setup_globals,
)
from omegaconf import DictConfig, open_dict

from sweep.config import PROJECT_ROOT
from sweep.launcher.fork_server import ForkServer, can_fork, module_command
from sweep.runtime import processes

log = logging.getLogger(__name__)
TRACKING_IMPORTS = ("mlflow", "mlflow.store.tracking.sqlalchemy_store")


class FreshProcessLauncher(BasicLauncher):
    def __init__(self, fork: bool = True) -> None:
        super().__init__()
        self.fork = fork and can_fork()  # (hydra.launcher.fork: fork jobs from a server, else spawn each)
        self.server: ForkServer | None = None
        self.warming: threading.Thread | None = None

    def setup(self, **kwargs) -> None:
        """The fork server starts here, as soon as the sweep knows its launcher: its imports (about
        15 s of a core) run while the sweep composes its jobs, and it serves every launch of the
        sweep (an Optuna sweep launches each batch of trials apart) until the sweep's process ends."""
        super().setup(**kwargs)
        if self.fork and self.server is None:
            self.start_server()
            atexit.register(self.close_server)

    def start_server(self) -> None:
        self.server = ForkServer(job_env())
        log.info("fork server (pid %d): imports the libraries once for the jobs of this sweep", self.server.process.pid)

    def close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        try:
            return self._launch(job_overrides, initial_job_idx)
        except BaseException:  # (a job interrupted mid-way may still owe the server's reply: start afresh)
            self.close_server()
            raise

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sweep.runtime.interrupts import install_signal_handlers

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        install_signal_handlers()  # SIGTERM, like Ctrl-C, reaches the wait for a job below as an exception
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs locally, each in a new process (%s)", len(job_overrides),
                 "forked from a server that imported the libraries once" if self.fork else "a new interpreter each")
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = idx
                config.hydra.job.num = idx
            ret = self._run(config)
            # The job's own callbacks ran in its process; the sweep's (the end-of-sweep table) see it here.
            self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
            returns.append(ret)
        return returns

    def _run(self, config: DictConfig) -> JobReturn:
        with tempfile.TemporaryDirectory(prefix="job-") as tmp:
            payload, result = Path(tmp) / "payload.pkl", Path(tmp) / "return.pkl"
            payload.write_bytes(cloudpickle.dumps(
                (self.hydra_context, config, self.task_function, Singleton.get_state(), sys.argv[0])))
            job = self._forked(payload, result) or subprocess.Popen(
                [*module_command("sweep.launcher.job_process"), str(payload), str(result)], env=job_env())
            if not self.warming:
                self.warming = warm_tracking_imports()
            try:
                code = job.wait()
            except KeyboardInterrupt as e:  # Ctrl-C reached the job too; a SIGTERM to the sweep alone did not
                from sweep.runtime.interrupts import Terminated

                processes.stop([job], signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
                raise
            if result.is_file():
                return cloudpickle.loads(result.read_bytes())
        return died(config, code)

    def _forked(self, payload: Path, result: Path):
        """The job forked from the sweep's server (a new one if it is gone), or None: spawn it."""
        if not self.fork:
            return None
        if self.server is not None and not self.server.alive():
            log.warning("fork server: it exited (status %s); starting another", self.server.process.returncode)
            self.close_server()
        if self.server is None:
            self.start_server()
        job = self.server.start(payload, result, job_env())
        if job is None:
            self.fork = False
        return job


def warm_tracking_imports() -> threading.Thread:
    """The sweep's own process reads the tracking store when its jobs end (the end-of-sweep table, a
    dead job's run): MLflow and its SQL store (3 s of imports) load in a thread while the first job
    runs, on a core the waiting sweep leaves free, not after the last one. (Started once the job is,
    not before: imports hold the GIL, and the sweep's own start-up would wait on them.)"""
    def imports() -> None:
        for name in TRACKING_IMPORTS:
            importlib.import_module(name)

    thread = threading.Thread(target=imports, name="tracking-imports", daemon=True)
    thread.start()
    return thread


def job_env() -> dict[str, str]:
    """A job process's environment: the project importable wherever the sweep was started, and
    nothing from that folder (an empty PYTHONPATH entry means the current folder: dropped)."""
    entries = [str(PROJECT_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    return os.environ | {"PYTHONPATH": os.pathsep.join(e for e in entries if e and e != ".")}


def died(config: DictConfig, code: int) -> JobReturn:
    """The return of a job whose process ended without one: recorded as a failed job (its MLflow
    run, left RUNNING, closed as KILLED) so that the sweep goes on."""
    from sweep.runtime.hydra_job import JobOutcome, sweep_id
    from sweep.tracking import store

    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    error = f"the job's process {how} before it returned (out of memory? see the system log)"
    log.error(error)
    store.close_orphaned_runs(store.open_experiment(config.tracking), config.tracking)
    ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=config, hydra_cfg=config,
                    status=JobStatus.COMPLETED)
    ret.return_value = JobOutcome("FAILED", sweep_id(config.tracking, config.hydra.sweep.dir), error=error)
    return ret
