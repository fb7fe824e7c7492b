"""Score the test examples a sequential sweep deferred, block by block, until each claim is decided.

    python settle.py --experiment NAME [--sweep-id ID] [--tracking-uri URI]

With `eval.sequential=true` a sweep's jobs score their development examples only (tag
`test_pass=deferred`). Per task, this takes the adapter the development scores choose (with the
seeds confirm.py retrained it with) and the strongest baseline, as the summary's primary claim does,
and scores their test examples in blocks of `eval.sequential_block`, in the order the chosen run's
seed fixes, until the anytime-valid confidence sequence decides (analysis/sequential.py) or the test
examples run out: the rest are never scored. The examples scored are recorded into those runs
(sweep/pipeline/deferred.py) and the summary, verdicts recorded, is printed: its sequential line
says after how many test examples it stopped. Exit status: 0 settled, 2 refused or bad input.
"""

import argparse
import logging
import os
import sys

import mlflow
import numpy as np

import sweep  # noqa: F401  (resolvers)
from analysis import verdict
from analysis.runs import best_by_dev, confirmations, latest_sweep_id, sweep_runs
from analysis.sequential import read_until_decided
from analysis.summary import References, group_key, main_metrics, references, summary_text
from sweep.config import ConfigError
from sweep.data.splits import DEV_PREFIX
from sweep.runtime.cli import add_tracking_uri, refuse
from sweep.runtime.retry import first_line
from sweep.runtime.secrets import guard_output
from sweep.tracking.store import require_store
from sweep.tracking.untrusted import Unquotable, printable
from sweep.vocabulary import RUN_NAME, tag_column

log = logging.getLogger("settle")


def arms(runs, metric: str) -> tuple[list, object]:
    """(the chosen adapter and its confirming seeds, the strongest baseline) of `metric`'s claim, as
    the summary pairs them (`references`: the latest finished strongest_baseline run of the
    adapter's model and eval.limit), by their development scores."""
    chosen = best_by_dev(runs, metric)
    if chosen is None:
        raise ConfigError(f"{metric}: the sweep has no finished adapter with a development score to settle")
    baseline = references(runs, DEV_PREFIX + metric).get(group_key(chosen), References()).strongest
    if baseline is None:
        raise ConfigError(f"{metric}: the sweep has no finished strongest baseline of its adapters' model and "
                          "eval.limit; sweep method=strongest_baseline eval.sequential=true into it first")
    return [chosen, *confirmations(runs, chosen["run_id"])], baseline


def settle_task(metric: str, adapter_rows: list, baseline_row, family: int, found: dict) -> str:
    """Score the two arms of `metric`'s claim block by block until decided (at level 1 - alpha over
    the `family` of claims); record them. `found`: each run's `deferred.checked`. Returns the stop's line."""
    from sweep.pipeline.deferred import deferred_run

    task, name = metric.split("/", 1)
    adapters = [deferred_run(found[r["run_id"]], task, name) for r in adapter_rows]
    baseline = deferred_run(found[baseline_row["run_id"]], task, name)
    n = {a.available for a in (*adapters, baseline)}
    if len(n) > 1:
        raise ConfigError(f"{metric}: the runs of its claim score different numbers of test examples ({sorted(n)}: "
                          "eval.limit differs); settle runs of one eval.limit")
    [n] = n
    cfg = adapters[0].cfg  # (the chosen run's: its seed orders the examples, as the summary reads them)

    def score_block(ids: list[int]) -> np.ndarray:
        adapter = np.mean([a.score(ids) for a in adapters], axis=0)
        diffs = adapter - np.asarray(baseline.score(ids))
        log.info("%s: %d of %d test examples scored", metric, len(baseline.scored), n)
        return diffs

    stopped = read_until_decided(score_block, n, cfg.seed, verdict.ALPHA / family, cfg.eval.margin,
                                 cfg.eval.sequential_block)
    for arm in (*adapters, baseline):
        arm.record()
    for arm in (*adapters, baseline):  # (only once all are recorded: a failure before leaves them all deferred)
        arm.settled()
    names = printable(", ".join(str(r.get(tag_column(RUN_NAME))) for r in adapter_rows))
    return f"{metric}: {names} vs {baseline.name}: {stopped.sentence()}"


def settle(experiment: str, sweep_id: str) -> int:
    runs = sweep_runs(experiment, sweep_id)
    metrics = main_metrics(runs, DEV_PREFIX) if not runs.empty else []
    if not metrics:
        raise ConfigError(f"sweep {sweep_id} of experiment {experiment!r} has no run with a development score "
                          "(data.dev_size=0 chooses nothing)")
    from sweep.pipeline.deferred import checked

    claims = {metric: arms(runs, metric) for metric in metrics}
    found = {row["run_id"]: checked(row["run_id"])  # (every run of every claim, before any model loads)
             for adapters, baseline in claims.values() for row in (*adapters, baseline)}
    for metric, (adapters, baseline) in claims.items():
        log.info("%s", settle_task(metric, adapters, baseline, len(metrics), found))
    print(summary_text(mlflow.get_tracking_uri(), experiment, sweep_id, record=True), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python settle.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-id", help="default: the experiment's latest sweep")
    add_tracking_uri(p)
    a = p.parse_args(argv)
    guard_output()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        require_store(a.tracking_uri)
        mlflow.set_tracking_uri(a.tracking_uri)
        return settle(a.experiment, a.sweep_id or latest_sweep_id(a.experiment))
    except (ConfigError, LookupError, Unquotable, mlflow.exceptions.MlflowException) as e:
        return refuse(first_line(e))


if __name__ == "__main__":
    sys.exit(main())
