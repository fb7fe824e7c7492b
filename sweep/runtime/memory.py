"""This process's memory: resident size now, each job's own peak (and each phase's: training and
scoring have different fixes), and freed memory handed back.

Why our own: `ru_maxrss` is the process's lifetime peak, so in a multirun (every job in one
process) each job after the largest would report the largest one's peak; Linux's "hiwater" reset
(`/proc/self/clear_refs`) gives each job its own. And torch's CPU tensors come from glibc's
malloc, which keeps freed pages of its heaps and, with its default adaptive threshold, serves
ever larger tensors from them: with batches of varying shapes the heap fragments and the resident
size creeps up step after step although nothing is held (pytorch/pytorch#27971). A fixed
mmap threshold makes every large block (activations, logits, gradients) its own mapping, returned
to the system when freed; `malloc_trim` returns what the small-block heaps keep between jobs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import re
import resource
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

STATUS = Path("/proc/self/status")
M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20  # blocks from 1 MiB up get their own mapping: all activations of a batch


@cache
def _libc():
    """glibc, or None (musl, macOS): the heap settings below are glibc's."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _status_mb(field: str) -> float | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    return None


def resident_mb() -> float | None:
    """Resident memory now (None where /proc is missing)."""
    return _status_mb("VmRSS")


def reset_peak() -> None:
    """Start a new peak: what `peak_mb` reports from here on is this job's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> dict[str, float]:
    """Peak resident memory since `reset_peak` (the process's lifetime peak where it cannot be
    reset), and on a GPU the peak allocated there."""
    import torch

    peaks = {"peak_rss_mb": _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


@dataclass
class PhasePeaks:
    phase: dict[str, float] = field(default_factory=dict)  # the phase's own peaks (`peak_rss_mb`, ...)
    job: dict[str, float] = field(default_factory=dict)    # the job's so far, the phase's included


@contextlib.contextmanager
def phase_peak():
    """Measure one phase of a job apart: yields a `PhasePeaks`, filled on exit. The phase resets the
    counter the job's peak is read from, so the peak before it is folded back into `job`."""
    before = peak_mb()
    reset_peak()
    peaks = PhasePeaks()
    try:
        yield peaks
    finally:
        peaks.phase = peak_mb()
        peaks.job = {k: max(v, before.get(k, v)) for k, v in peaks.phase.items()}


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold (switching off its adaptive growth): large blocks are mapped and
    unmapped, so a training loop's varying batch shapes cannot fragment the heap. Returns whether
    it took effect."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def freeze_long_lived() -> None:
    """Take what is alive now out of the cyclic collector's sight (`gc.freeze`), once per process:
    called before a job creates anything, when the heap is the imported libraries (about 750k
    objects here), so every later full collection, ours between jobs and Python's own during one,
    scans only what jobs create (0.4 s to about 0 per collection on 2 cores). Frozen objects still
    die by reference counting; only a cycle among them would outlive its use, and modules, classes
    and functions do not die. Before fork() it also keeps the children's collections off the
    parent's pages, as Python's gc documentation advises (the fork server calls it there)."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def release() -> None:
    """Hand back what a finished job freed: unreachable objects, the GPU allocator's cache and
    glibc's free heap pages."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
