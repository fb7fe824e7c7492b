"""Memory stays flat over a multirun, and each job reports its own peak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import mlflow
import pytest
from conftest import (
    ROOT,
    TINY,
    clean_env,
    run_sweep,
    runs_of,
    training_run_in_another_process,
)

# A training step's activations: 60 blocks of about 5 MB, each step a little smaller than the last
# (as group_by_length's batches shrink), with small long-lived objects allocated among them.
VARYING_SHAPES = textwrap.dedent("""
    import gc, sys, torch
    from sweep.runtime import memory
    if sys.argv[1] == "mapped":
        assert memory.map_large_blocks()
    torch.set_num_threads(1)
    kept, before = [], memory.resident_mb()
    for step in range(6):
        activations = []
        for layer in range(60):
            activations.append(torch.ones(1_300_000 - step * 1000 - layer))
            kept.append(torch.ones(64))
        del activations
    gc.collect()
    print(round(memory.resident_mb() - before))
""")


def retained_mb(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", VARYING_SHAPES, mode], cwd=ROOT, env=clean_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_freed_activations_of_varying_shapes_go_back_to_the_system():
    """glibc's adaptive threshold serves shrinking blocks from its heap and keeps them once freed
    (300 MB held after the steps here); with the threshold fixed, nothing is held."""
    assert retained_mb("default") > 150
    assert retained_mb("mapped") < 30


FROZEN = textwrap.dedent("""
    import gc, weakref
    from sweep.runtime import memory
    class Node:
        pass
    library = Node(); library.me = library  # a long-lived cycle, alive when the first job starts
    memory.freeze_long_lived()
    frozen = gc.get_freeze_count()
    library, since = None, [[], {}]  # (objects a freeze now would take)
    memory.freeze_long_lived()  # a later job: nothing more is frozen
    job = Node(); job.me = job
    gone = weakref.ref(job)
    job = None
    gc.collect()
    print(frozen > 0, gc.get_freeze_count() == frozen, gone() is None)
""")


def test_what_is_alive_when_the_first_job_starts_is_frozen_once_and_a_jobs_cycles_are_still_collected():
    """memory.freeze_long_lived (called as each job starts, and by the fork server before it forks):
    the libraries alive then are out of every later collection's sight (0.4 s each here, several a
    job), once per process; what a job creates, cycles included, is still collected."""
    p = subprocess.run([sys.executable, "-c", FROZEN], cwd=ROOT, capture_output=True, text=True, env=clean_env())
    assert p.stdout.split() == ["True", "True", "True"], p.stderr[-2000:]


def test_each_job_gets_its_own_peak():
    from sweep.runtime import memory

    memory.reset_peak()
    big = bytearray(400 * 2**20)  # touched: resident
    del big
    lifetime_peak = memory.peak_mb()["peak_rss_mb"]
    memory.reset_peak()
    assert memory.peak_mb()["peak_rss_mb"] < lifetime_peak - 300


def test_a_phase_has_its_own_peak_and_the_job_keeps_the_larger_one():
    """Training and scoring peak apart (their fixes differ: gradient checkpointing, eval.batch_size):
    a phase after a larger one reports its own peak, while the job's peak stays the larger one."""
    from sweep.runtime import memory

    memory.reset_peak()
    big = bytearray(400 * 2**20)  # the first phase's peak (touched: resident)
    del big
    with memory.phase_peak() as peaks:
        small = bytearray(100 * 2**20)
        del small
    assert peaks.phase["peak_rss_mb"] < peaks.job["peak_rss_mb"] - 250
    assert memory.peak_mb()["peak_rss_mb"] < peaks.job["peak_rss_mb"] - 250  # the counter was reset
    with memory.phase_peak() as later:
        larger = bytearray(600 * 2**20)
        del larger
    assert later.job["peak_rss_mb"] == later.phase["peak_rss_mb"] > peaks.job["peak_rss_mb"]


JOBS = 10
WARM_UP = 5  # the first jobs import and cache what every later job reuses
GROWTH_PER_JOB_MB = 5  # measured +3 per job on the 2-core CPU machine


@pytest.mark.e2e
def test_ten_jobs_in_one_process_keep_memory_flat(tmp_path, tracking):
    """One multirun, one process (Hydra's basic launcher): the resident memory each job starts
    with (what the jobs before it left behind) stops growing after the first few jobs. The jobs
    differ by learning rate, as a sweep's trials do; jobs whose tensors change shape (lora.r) leave
    more behind in the libraries' native caches, which is why the long-sweep presets run each job
    in a fresh process (tested below)."""
    lrs = ",".join(f"{(k + 1) * 1e-4:.4f}" for k in range(JOBS))
    result = run_sweep("-m", *TINY, *tracking, f"train.lr={lrs}", f"hydra.sweep.dir={tmp_path}/multirun")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(tracking)
    assert len(runs) == JOBS and set(runs["status"]) == {"FINISHED"} and runs["tags.pid"].nunique() == 1
    at_start = list(runs["metrics.rss_at_start_mb"])
    growth = at_start[-1] - at_start[WARM_UP - 1]
    assert growth < GROWTH_PER_JOB_MB * (JOBS - WARM_UP), at_start


# A plain multirun, as a user types it: the default launcher (fresh_process), not the tests' basic one.
PLAIN = [a for a in TINY if not a.startswith("hydra/launcher=")]
FRESH = ["train.logging_steps=1", "data.max_train_samples=64"]


@pytest.mark.e2e
def test_a_job_killed_for_memory_fails_alone_in_a_plain_multirun(tmp_path, tracking):
    """Each job of a plain `-m` in its own process (the default launcher): the first job's process is SIGKILLed (as the out-of-memory
    killer does) mid-training; its run is closed KILLED, the next job runs and finishes, both
    start from the same memory, and the grid exits 1 naming the signal."""
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen([sys.executable, "sweep.py", "-m", *PLAIN, *tracking, *FRESH, "train.max_steps=40",
                                  "lora.r=1,2", f"hydra.sweep.dir={tmp_path}/multirun"],
                                 cwd=ROOT, stdout=out, stderr=out, env=clean_env())
        victim = training_run_in_another_process(tracking, sweep, log)
        os.kill(int(victim["tags.pid"]), signal.SIGKILL)
        sweep.wait(timeout=600)
    output = log.read_text()
    assert sweep.returncode == 1, output[-3000:]
    assert "was killed by SIGKILL" in output and "1 of 2 jobs did not finish" in output
    runs = runs_of(tracking).set_index("run_id")
    assert runs.loc[victim["run_id"], "status"] == "KILLED"
    assert sorted(runs["status"]) == ["FINISHED", "KILLED"]
    assert len(set(runs["tags.pid"]) | {str(sweep.pid)}) == 3  # every job its own process
    first, second = runs["metrics.rss_at_start_mb"]
    assert abs(first - second) < 50  # a fresh process: nothing left behind by the job before
    # Each run records the command that runs its job alone, not the process the launcher made for it.
    finished = runs[runs["status"] == "FINISHED"].index[0]
    assert runs.loc[finished, "tags.mlflow.source.name"].endswith("sweep.py")
    command = mlflow.artifacts.load_text(f"runs:/{finished}/command.txt")
    assert "sweep.py" in command and "lora.r=" in command and "fork_server" not in command, command


@pytest.mark.e2e
def test_sigterm_to_a_fresh_process_sweep_reaches_its_job(tmp_path, tracking):
    """`kill PID` reaches the sweep only: it passes the signal on to the job's process, whose run
    ends KILLED, and no process is left."""
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        sweep = subprocess.Popen([sys.executable, "sweep.py", "-m", *PLAIN, *tracking, *FRESH,
                                  "train.max_steps=100000", "lora.r=1,2", f"hydra.sweep.dir={tmp_path}/multirun"],
                                 cwd=ROOT, stdout=out, stderr=out, env=clean_env(), start_new_session=True)
        training_run_in_another_process(tracking, sweep, log)
        sweep.send_signal(signal.SIGTERM)
        sweep.wait(timeout=120)
    with pytest.raises(ProcessLookupError):
        os.killpg(sweep.pid, 0)  # nothing of the sweep is left running
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "KILLED" and run["tags.error"] == "interrupted", log.read_text()[-3000:]
