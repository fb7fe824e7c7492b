"""Retrain the configuration a sweep chose on development data with fresh seeds, so that its primary
verdict is a claim about the configuration, not about one trained adapter (analysis/verdict.py).

    python confirm.py --experiment NAME [--sweep-id ID] [--seeds 2] [--tracking-uri URI]

The chosen run is the one the end-of-sweep table calls chosen (the best development score, ties to
fewer trainable parameters). Each new run is that run's recorded config (reproduce.py's rules for
what a store may set) with `seed` = its seed + 1, + 2, ...: the seed draws the training subset, its
order and the adapter's initial weights. They join the same sweep, tagged `confirms=<run id>`, and
the summary (verdicts recorded as tags) is printed again once they are done. Exit status: 0 done,
1 a seed's run failed, 2 refused or bad input.
"""

import argparse
import logging
import os
import sys

import mlflow
from omegaconf import open_dict

import sweep  # noqa: F401  (resolvers)
from analysis.runs import best_by_dev, confirmations, latest_sweep_id, sweep_runs
from analysis.summary import main_metrics, summary_text
from sweep.config import ConfigError
from sweep.data.splits import DEV_PREFIX
from sweep.pipeline.checks import validate
from sweep.pipeline.reproduce import recorded_config
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import guard_output
from sweep.tracking.store import require_store
from sweep.tracking.untrusted import Unquotable, printable
from sweep.vocabulary import CONFIRMS, RUN_NAME, tag_column

log = logging.getLogger("confirm")


def confirm(experiment: str, sweep_id: str, seeds: int) -> int:
    runs = sweep_runs(experiment, sweep_id)
    metrics = main_metrics(runs, DEV_PREFIX) if not runs.empty else []  # (the choice's: a deferred test pass has none)
    chosen = best_by_dev(runs, metrics[0]) if metrics else None
    if chosen is None:
        raise ConfigError(f"sweep {sweep_id} of experiment {experiment!r} has no finished adapter with a development "
                          f"score to confirm (data.dev_size=0 chooses nothing)")
    run_id = chosen["run_id"]
    cfg, _ = recorded_config(run_id, log=log.info)
    validate(cfg)
    done = {int(r["params.seed"]) for r in confirmations(runs, run_id) if str(r.get("params.seed")).isdigit()}
    wanted = [cfg.seed + i for i in range(1, seeds + 1)]
    from sweep.pipeline.job import run_job

    failed = 0
    for seed in (s for s in wanted if s not in done):
        with open_dict(cfg):
            cfg.seed = seed
            cfg.tracking.uri = mlflow.get_tracking_uri()
            cfg.tracking.experiment = experiment
            cfg.tracking.sweep_id = sweep_id
            cfg.tracking.run_name = f"{chosen.get(tag_column(RUN_NAME))}-seed{seed}"
            cfg.tracking.tags = {CONFIRMS: run_id}
        log.info("confirming %s (%s) with seed %d", printable(str(chosen.get(tag_column(RUN_NAME)))), run_id, seed)
        outcome = run_job(cfg)
        failed += outcome.status != "FINISHED"
    print(summary_text(mlflow.get_tracking_uri(), experiment, sweep_id, record=True), flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python confirm.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-id", help="default: the experiment's latest sweep")
    p.add_argument("--seeds", type=int, default=2, help="fresh seeds beside the chosen run's own (default 2)")
    add_tracking_uri(p)
    a = p.parse_args(argv)
    guard_output()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not 1 <= a.seeds <= 100:
        return refuse(f"--seeds {a.seeds}: give 1 to 100 fresh seeds")
    try:
        require_store(a.tracking_uri)
        mlflow.set_tracking_uri(a.tracking_uri)
        return confirm(a.experiment, a.sweep_id or latest_sweep_id(a.experiment), a.seeds)
    except (ConfigError, LookupError, Unquotable, mlflow.exceptions.MlflowException) as e:
        return refuse(first_line(e))


if __name__ == "__main__":
    sys.exit(main())
