"""What every benchmark row shares: the three profiles (full, session, quick), the sweep command, the
in-process config, and the harness's own training rate. bench/run.py runs the rows."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mlflow  # noqa: E402

import sweep  # noqa: E402,F401
from sweep.config import compose_config  # noqa: E402

FULL = {"model": "smollm2_135m", "steps": 30, "overhead_steps": 30, "repeats": 1, "eval_limit": 100, "grid_steps": 60,
        "grid_limit": 200, "grid_space": {"lora.r": "2,8,16", "train.lr": "1e-4,3e-4,1e-3,3e-3"}, "optuna_trials": 12, "optuna_sampler": "grid", "train_samples": 2000,
        "panel_examples": 200, "team_trials": 8, "team_steps": 4, "team_servers": True, "memory_steps": 4,
        "memory_methods": "zero_shot,few_shot,lora,prompt_tuning,full", "memory_tasks": "sst2,rte", "rl_steps": 8,
        "kl_batch_size": 32, "generation_limit": 100, "search_dev": (200, 400), "search_startup": 50, "search_grid": [], "roofline_rows": 1024,
        "start_up_jobs": (3, 10), "start_up_repeats": 3,
        "compiled_max_seq_length": None}
# Every row of FULL on reduced sizes (fewer examples, steps, configurations and jobs), SmolLM2-135M still:
# a benchmark a session can run again after a change (at most 30 min on 2 cores); the README's figures
# come from FULL. Its ratios are noisier and some (the grid's regret, the race's saving) need FULL's sizes;
# its compiled step meets one shape (examples cut to 64 tokens: one compilation of the three a run meets).
SESSION = FULL | {"steps": 12, "eval_limit": 24, "generation_limit": 8, "grid_steps": 12, "grid_limit": 24,
                  "grid_space": {"lora.r": "2,16", "train.lr": "3e-4,3e-3"}, "optuna_trials": 4, "train_samples": 500,
                  "panel_examples": 16, "team_trials": 3, "memory_methods": "zero_shot,lora",
                  "memory_tasks": "sst2", "rl_steps": 2, "search_dev": (16, 32), "search_startup": 8,
                  # (8 of the panel's 18 variants: the search's cost is per variant more than per example)
                  "search_grid": ["method.search.template=[default,plain]", "method.search.fewshot_sampler=[random]"],
                  "start_up_repeats": 1, "compiled_max_seq_length": 64}
QUICK = {"model": "tiny", "steps": 10, "overhead_steps": 10, "repeats": 1, "eval_limit": 16, "grid_steps": 4, "grid_limit": 16,
         "grid_space": {"lora.r": "2,8", "train.lr": "1e-3"}, "optuna_trials": 1, "optuna_sampler": "grid", "train_samples": 64, "panel_examples": 16,
         "team_trials": 2, "team_steps": 2, "team_servers": False, "memory_steps": 2,
         "memory_methods": "lora", "memory_tasks": "sst2", "rl_steps": 1,  # (memory: one job per launcher)
         "start_up_jobs": (2,), "start_up_repeats": 1, "compiled_max_seq_length": None,
         "kl_batch_size": 8, "generation_limit": 16, "search_dev": (16, 32), "search_startup": 4, "roofline_rows": 1024,
         # (2 of the panel's variants, zero- and few-shot: a smoke test of the search, in seconds)
         "search_grid": ["method.search.template=[default]", "method.search.num_fewshot=[0,2]",
                         "method.search.fewshot_sampler=[random]", "method.search.calibrate=[false]"]}  # (the old KL pass at 32 rows of the longest seed task holds 9 GB: too much beside other tests)
PROFILES = {"full": FULL, "session": SESSION, "quick": QUICK}


# The sweeps of the compute and team benchmarks run their jobs in the sweep's process, as when these
# figures were first measured; the memory benchmark compares that with the default (a new process
# per job: ~10 s of start-up each, which would dominate these short jobs' timings).
IN_PROCESS = "hydra/launcher=basic"


def median(xs) -> float:
    return statistics.median(xs)


def sweep_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "sweep.py"), *args]


def run(cmd: list[str], log: Path) -> float:
    """Run a command to completion (output to `log`); its wall time."""
    start = time.perf_counter()
    with log.open("a") as out:
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True, env=os.environ)
    return time.perf_counter() - start



class BenchBase:
    def __init__(self, p: dict, work: Path) -> None:
        self.p, self.work = p, work
        self.uri = f"sqlite:///{work}/mlflow.db"
        self.track = [f"tracking.uri={self.uri}", f"tracking.artifact_location={work}/artifacts"]
        self.common = [f"model={p['model']}", f"data.max_train_samples={p['train_samples']}", "train.batch_size=8",
                       IN_PROCESS]
        self.log = work / "bench.log"
        mlflow.set_tracking_uri(self.uri)

    def runs(self, experiment: str):
        return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])

    def cfg(self, *overrides: str):
        return compose_config([*self.common, *overrides, *self.track])

    def training_rate(self, cfg) -> float:
        """Median training tokens/s of the harness's own train step (in process) for `cfg`."""
        from sweep.pipeline.build import build
        from sweep.training.sft import train

        rates = []
        for _ in range(self.p["repeats"]):
            built = build(cfg)
            with tempfile.TemporaryDirectory() as folder:
                rates.append(train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed,
                                   folder).tokens_per_second)
        return median(rates)
