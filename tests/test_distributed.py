"""Multi-process training: `accelerate launch` and `torchrun` on the CPU (gloo), two processes."""

import os
import shutil
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import ROOT, clean_env, runs_of

pytestmark = pytest.mark.e2e
# Sequential batches: the two processes' per-device batches of 2 are the single process's batch
# of 4, so the curves differ only by the order of floating-point reductions.
ARGS = ["model=tiny", "data.max_train_samples=64", "train.max_steps=6", "train.logging_steps=1",
        "train.sampling=sequential", "train.warmup_ratio=0", "eval.limit=8", "train.lr=1e-3"]
LOSS_TOLERANCE = 0.02  # absolute, on a loss of ~10.8 (measured: 0.005)


def launch(launcher: list[str], *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([*launcher, "sweep.py", *ARGS, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=clean_env())
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def losses(run_id: str) -> list[float]:
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


def test_two_processes_make_one_run_with_the_single_process_loss_curve(tmp_path, tracking):
    """torchrun with two processes makes one run whose loss curve is the single-process run's (batch 2 x 2 =
    4): slow because it runs the job three times over in new interpreters (two DDP ranks, then one)."""
    torchrun = [shutil.which("torchrun", path=os.path.dirname(sys.executable)), "--nproc_per_node", "2"]
    two = launch(torchrun, "train.batch_size=2", *tracking, f"hydra.run.dir={tmp_path}/two")
    [ddp] = runs_of(tracking).to_dict("records")  # one run for the job, not one per process
    assert ddp["tags.world_size"] == "2" and ddp["status"] == "FINISHED"
    assert two.stdout.count("Runs in the MLflow UI") == 1  # one table, from the main process
    launch([sys.executable], "train.batch_size=4", *tracking, f"hydra.run.dir={tmp_path}/one")
    one = runs_of(tracking).to_dict("records")[1]
    assert one["tags.world_size"] == "1"
    a, b = losses(ddp["run_id"]), losses(one["run_id"])
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) < LOSS_TOLERANCE, (a, b)
    assert ddp["metrics.train_tokens"] == one["metrics.train_tokens"]  # every process's tokens counted once
    assert mlflow.MlflowClient().list_artifacts(ddp["run_id"], "adapter")  # saved once, by the main process


def test_accelerate_launch(tmp_path, tracking):
    """`accelerate launch` with two processes makes one FINISHED run of world size 2: slow because each
    rank is a new interpreter with the whole stack's imports."""
    accelerate = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu"]
    launch(accelerate, "train.batch_size=2", "train.max_steps=2", *tracking, f"hydra.run.dir={tmp_path}/acc")
    [run] = runs_of(tracking).to_dict("records")
    assert run["tags.world_size"] == "2" and run["status"] == "FINISHED"


def test_the_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {f.stem: load_config_from_file(str(f)) for f in (ROOT / "conf" / "accelerate").glob("*.yaml")}
    assert {k: str(c.distributed_type).split(".")[-1] for k, c in kinds.items()} == {
        "ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    assert [kinds[f"deepspeed_zero{n}"].deepspeed_config["zero_stage"] for n in (2, 3)] == [2, 3]
