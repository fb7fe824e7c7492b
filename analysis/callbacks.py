"""Hydra callback that prints the comparison table when a run or a sweep ends, records each
adapter's verdict in its run, and registers the best adapter when asked (tracking.register_best):
a report, so it lives in analysis/ (the harness in sweep/ never imports analysis/)."""

from __future__ import annotations

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sweep.runtime.distributed import is_main
from sweep.runtime.secrets import redact


class SummaryCallback(Callback):
    """Collects job outcomes and prints `analysis.summary`'s table at the end.

    A grid multirun whose jobs failed (or had invalid configs) exits with status 1 after the
    table, so scripts notice; the failed runs stay in MLflow as FAILED with their tracebacks.
    Under a launcher that runs jobs in other processes, their outcomes do not come back here:
    the table is then the sweep's (grid) or the experiment's latest (an Optuna study).
    """

    def __init__(self) -> None:
        self.outcomes = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if job_return.status == JobStatus.COMPLETED and job_return.return_value is not None:
            self.outcomes.append(job_return.return_value)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from sweep.runtime.hydra_job import sweep_id_of

        if not is_main():  # (the other processes of a multi-process job)
            return
        failed = [o for o in self.outcomes if o.status not in ("FINISHED", "PRUNED")]
        optuna = "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower()
        sid = self.outcomes[0].sweep_id if self.outcomes else None if optuna else sweep_id_of(config.hydra.sweep.dir)
        self._print(config, sid)
        if config.tracking.get("register_best"):
            self._register_best(config, sid)
        if failed:
            print(f"{len(failed)} of {len(self.outcomes)} jobs did not finish:", file=sys.stderr)
            for o in failed:
                print(f"  {o.status}: {redact(o.error or '')}", file=sys.stderr)
            # Optuna sweeps tolerate failed trials (up to hydra.sweeper.max_failures); a grid does not.
            if not optuna:
                sys.exit(1)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        if is_main() and any(o.status == "FINISHED" for o in self.outcomes):
            self._print(config, self.outcomes[0].sweep_id)

    @staticmethod
    def _print(config: DictConfig, sid: str | None) -> None:
        from analysis.summary import summary_text

        try:
            print(summary_text(config.tracking.uri, config.tracking.experiment, sid, record=True), flush=True)
        except Exception as e:  # the table is a convenience; never fail a finished sweep over it
            print(redact(f"(no summary table: {type(e).__name__}: {e})"), file=sys.stderr)

    @staticmethod
    def _register_best(config: DictConfig, sid: str | None) -> None:
        """tracking.register_best: the sweep's best adapter by development score (the choice the
        table reports) becomes a version of its registered model, with tracking.register_alias;
        in a process of its own, as `make promote` runs it (this one is still inside Hydra's app,
        and the model load leaves this process's memory alone)."""
        import os
        import subprocess

        import mlflow

        from analysis.runs import best_by_dev, latest_sweep_id, sweep_runs
        from analysis.summary import main_metrics
        from sweep.config import PROJECT_ROOT

        mlflow.set_tracking_uri(config.tracking.uri)
        runs = sweep_runs(config.tracking.experiment, sid or latest_sweep_id(config.tracking.experiment))
        done = runs[runs["status"] == "FINISHED"] if not runs.empty else runs
        best = best_by_dev(done, main_metrics(done)[0]) if not done.empty and main_metrics(done) else None
        if best is None:
            print("tracking.register_best: no finished adapter with a development score; nothing registered",
                  file=sys.stderr)
            return
        subprocess.run([sys.executable, "-m", "sweep.ops.promote", best["run_id"], "--alias",
                        config.tracking.register_alias], cwd=PROJECT_ROOT, check=False,
                       env=os.environ | {"MLFLOW_TRACKING_URI": config.tracking.uri})  # (a password stays off argv)
