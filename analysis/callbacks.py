"""Hydra callback that prints the comparison table when a run or a sweep ends, and records each
adapter's verdict in its run (a report, so it lives in analysis/: the harness in sweep/ never
imports analysis/)."""

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
