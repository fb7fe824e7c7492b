"""A Hydra launcher that runs each job of a multirun in a new Python process
(`hydra/launcher=fresh_process`), one after another.

Why our own: Hydra's basic launcher runs every job in the sweep's own process, where native
memory (allocator heaps, kernel caches, libraries' own pools) that a job leaves behind adds up
over hundreds of trials, and a job killed for memory takes the whole sweep with it. joblib's
launcher reuses its worker processes, so the same holds there. Here a job's memory is returned
to the system when its process exits (the sweep's memory stays flat by construction), and a job
whose process dies (SIGKILL, the kernel's out-of-memory killer, a crash in native code) is
recorded as FAILED while the sweep goes on. Each job pays the start-up of a new interpreter
(importing torch, transformers, lm-eval: seconds).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from omegaconf import DictConfig, open_dict

from sweep.config import PROJECT_ROOT
from sweep.runtime import processes

log = logging.getLogger(__name__)


class FreshProcessLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sweep.runtime.interrupts import install_signal_handlers

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        install_signal_handlers()  # SIGTERM, like Ctrl-C, reaches the wait for a job below as an exception
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs locally, each in a new process", len(job_overrides))
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
                (self.hydra_context, config, self.task_function, Singleton.get_state())))
            env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                             os.environ.get("PYTHONPATH")]))}
            job = subprocess.Popen([sys.executable, "-m", "sweep.study.fresh_process", str(payload), str(result)],
                                   env=env)
            try:
                code = job.wait()
            except KeyboardInterrupt as e:  # Ctrl-C reached the job too; a SIGTERM to the sweep alone did not
                from sweep.runtime.interrupts import Terminated

                processes.stop([job], signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
                raise
            if result.is_file():
                return cloudpickle.loads(result.read_bytes())
        return died(config, code)


def died(config: DictConfig, code: int) -> JobReturn:
    """The return of a job whose process ended without one: recorded as a failed job (its MLflow
    run, left RUNNING, closed as KILLED) so that the sweep goes on."""
    from sweep.runtime.hydra_job import JobOutcome, sweep_id
    from sweep.tracking import store

    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
    error = f"the job's process {how} before it returned (out of memory? see the system log)"
    log.error(error)
    store.close_orphaned_runs(store.open_experiment(config.tracking))
    ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=config, hydra_cfg=config,
                    status=JobStatus.COMPLETED)
    ret.return_value = JobOutcome("FAILED", sweep_id(config.tracking, config.hydra.sweep.dir), error=error)
    return ret


def main(payload: str, result: str) -> None:
    """In the job's process: run it as Hydra's basic launcher would, and hand its return back."""
    hydra_context, config, task_function, singletons = cloudpickle.loads(Path(payload).read_bytes())
    setup_globals()
    Singleton.set_state(singletons)
    HydraConfig.instance().set_config(config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    Path(result).write_bytes(cloudpickle.dumps(ret))


if __name__ == "__main__":
    main(*sys.argv[1:3])
