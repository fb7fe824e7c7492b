"""What every job entry point (a training job, the instruction generator, the launchers and the
end-of-sweep callback) needs from Hydra's runtime: the sweep's id, whether this is a multirun, the
outcome it hands back, the one-line refusal of bad input, and the machine's cores."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.runtime.cli import refuse


@dataclass
class JobOutcome:
    """What a job hands back to the sweeper (and the summary)."""
    status: str                       # FINISHED | PRUNED | FAILED | INVALID
    sweep_id: str | None = None
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    retry: bool = False               # failed for want of the tracking server, not of its own: run it again


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def sweep_id(tracking: DictConfig, sweep_dir: str | None = None) -> str:
    """`tracking.sweep_id`, else the date/time folders of Hydra's output dir (the sweep dir in a
    multirun, so every job of one sweep shares it). `sweep_dir`: the sweep's folder, for a caller
    outside the job (whose Hydra runtime is not the job's)."""
    if tracking.sweep_id:
        return str(tracking.sweep_id)
    if sweep_dir is not None:
        return sweep_id_of(sweep_dir)
    hc = _hydra()
    if hc is None:
        return time.strftime("%Y-%m-%d_%H-%M-%S")
    out = Path(hc.runtime.output_dir)
    return sweep_id_of(out.parent if is_multirun() else out)


def sweep_id_of(folder: str | Path) -> str:
    return "_".join(Path(folder).parts[-2:])


def use_all_cores() -> None:
    """Torch's intra-op threads on every core this process may use (torch's default can be lower
    in containers, where it counts the host's physical cores), shared among the job's processes
    on this host; `OMP_NUM_THREADS`, when set, is the user's choice (e.g. several sweeps on one
    machine, or the test suite on two workers) and is kept."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        return
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_processes))


def report_bad_input(e: ConfigError, single_run: bool) -> None:
    """One line on stderr that names the problem and the fix; a single run then leaves nothing
    behind and exits with status 2 (in a multirun the sweep goes on)."""
    refuse(e)
    if single_run:
        discard_output_dir()
        sys.exit(2)


def discard_output_dir() -> None:
    """A single run refused for bad input leaves nothing behind: Hydra made its output folder (the
    saved config and a log) before the job could check the input. Removed only when everything in
    it was written by this process, with the two folders above it if they are then empty."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not Path("/proc/self").exists():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    started = Path("/proc/self").stat().st_ctime
    files = list(out.rglob("*")) if out.is_dir() else []
    if files and all(f.stat().st_mtime >= started - 1 for f in files):
        shutil.rmtree(out, ignore_errors=True)
        with contextlib.suppress(OSError):  # (outputs/DATE/TIME: the folders Hydra made above it, if empty)
            out.parent.rmdir()
            out.parent.parent.rmdir()
