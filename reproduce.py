"""Re-run a recorded run and compare every metric (see sweep/pipeline/reproduce.py).

    python reproduce.py RUN_ID [--strict] [--rtol R] [--tracking-uri URI] [--allow KEY ...]
    python reproduce.py --from-optuna STUDY[:TRIAL] [...]     (default trial: the study's best)

Exit status: 0 identical (or within --rtol), 1 different, 2 refused or bad input.
"""

import argparse
import os
import sys

import mlflow

import sweep  # noqa: F401  (resolvers)
from sweep.config import ConfigError
from sweep.pipeline.reproduce import check_allowed, find_trial_run, reproduce
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import guard_output
from sweep.tracking.store import require_store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python reproduce.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_id", nargs="?", help="the MLflow run to reproduce")
    p.add_argument("--from-optuna", metavar="STUDY[:TRIAL]", help="reproduce an Optuna trial (default: the best)")
    p.add_argument("--strict", action="store_true", help="refuse when the code or data differ from the run's")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: 0 on the CPU, 1e-3 on a GPU)")
    p.add_argument("--allow", action="append", default=[], metavar="KEY",
                   help="take this stored key (e.g. model.name_or_path) from the run instead of this checkout")
    add_tracking_uri(p)
    a = p.parse_args(argv)
    guard_output()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr carries the one-line errors
    if bool(a.run_id) == bool(a.from_optuna):
        p.error("give a RUN_ID or --from-optuna STUDY[:TRIAL] (one of them)")
    try:
        check_allowed(a.allow)
        require_store(a.tracking_uri)
        mlflow.set_tracking_uri(a.tracking_uri)
        run_id = a.run_id
        if a.from_optuna:
            study, _, trial = a.from_optuna.partition(":")
            if trial and not trial.isdigit():
                raise ConfigError(f"--from-optuna {a.from_optuna}: TRIAL must be a trial number, e.g. {study}:3")
            run_id = find_trial_run(study, int(trial) if trial else None)
        return reproduce(run_id, a.strict, a.rtol, a.allow)
    except (ConfigError, mlflow.exceptions.MlflowException) as e:
        return refuse(first_line(e))


if __name__ == "__main__":
    sys.exit(main())
