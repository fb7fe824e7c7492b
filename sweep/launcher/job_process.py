"""One Hydra job in this process, from the payload a launcher wrote: what a job's own process runs,
whether it was spawned (`python -m sweep.launcher.job_process PAYLOAD RETURN`) or forked by the fork
server (sweep/launcher/fork_server.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import run_job, setup_globals


def main(payload: str, result: str) -> None:
    """Run the job as Hydra's basic launcher would, and hand its return back in `result`.

    The job's command line becomes the one a user would type for it alone (`python sweep.py` with
    the job's overrides), not this process's: MLflow records it as the run's source, and the run's
    command.txt, so the MLflow UI and the report show a command that runs the job again."""
    hydra_context, config, task_function, singletons, entry = cloudpickle.loads(Path(payload).read_bytes())
    sys.argv = [entry, *config.hydra.overrides.task]
    setup_globals()
    Singleton.set_state(singletons)
    HydraConfig.instance().set_config(config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    Path(result).write_bytes(cloudpickle.dumps(ret))


if __name__ == "__main__":
    main(*sys.argv[1:3])
