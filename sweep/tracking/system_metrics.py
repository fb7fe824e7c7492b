"""A run's system metrics (`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`,
disk, network, and per GPU its utilisation and memory where one is present): MLflow's own monitor,
sampling every `tracking.system_metrics_interval` seconds while the job runs.

Why a subclass: MLflow's monitor publishes only after a full sampling interval and drops what it
sampled when the run ends first, so a job shorter than one interval (a quick baseline, a tiny
trial) would record nothing; this one publishes its last samples as it stops."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from sweep.runtime.retry import first_line

log = logging.getLogger(__name__)
PREFIX = "system/"  # MLflow's name for these curves


class RunSystemMetrics(SystemMetricsMonitor):
    """MLflow's system-metrics monitor for one run, publishing what it holds when it stops."""

    def finish(self) -> None:
        if self._process is None:
            return
        self._shutdown_event.set()
        self._process.join()
        self._process = None
        try:
            self.collect_metrics()  # (one sample at least, taken now)
            self.publish_metrics(self.aggregate_metrics())
            self.mlflow_logger.flush()
        except Exception as e:  # noqa: BLE001  (system metrics never fail a job)
            log.warning("system metrics of run %s not recorded: %s", self._run_id, first_line(e))


@contextlib.contextmanager
def system_metrics(run_id: str, interval: float | None) -> Iterator[None]:
    """Sample the machine every `interval` seconds while the block runs; None: nothing."""
    if not interval:
        yield
        return
    monitor = RunSystemMetrics(run_id, sampling_interval=interval)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
