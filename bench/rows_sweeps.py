"""Benchmark rows of sweeps: grid vs Optuna efficiency, memory over multiruns, the RL stage, the
team's servers."""

from __future__ import annotations

import math
import os
import subprocess
import time

import mlflow

from bench.common import IN_PROCESS, ROOT, BenchBase, median, run, sweep_cmd
from sweep.vocabulary import METHOD, STUDY_METHOD, tag_column


class SweepRows(BenchBase):
    # 5 -------------------------------------------------------------------------------------------
    def sweep_efficiency(self) -> dict:
        steps, limit = self.p["grid_steps"], self.p["grid_limit"]
        space = self.p["grid_space"]
        base = [*self.common, f"train.max_steps={steps}", f"eval.limit={limit}", "tracking.log_adapter=false",
                *self.track]
        run(sweep_cmd("-m", *base, *(f"{k}={v}" for k, v in space.items()), "tracking.experiment=bench-grid"),
            self.log)
        run(sweep_cmd("-m", "hydra/sweeper=optuna", *base, *(f"{k}=choice({v})" for k, v in space.items()),
                      f"hydra.sweeper.n_trials={self.p['optuna_trials']}", "hydra.sweeper.pruner=median",
                      f"hydra.sweeper.sampler={self.p['optuna_sampler']}",
                      f"hydra.sweeper.storage={self.work}/optuna.journal", "hydra.sweeper.study_name=bench",
                      f"eval.every_steps={max(1, steps // 4)}", f"eval.slice_size={min(64, limit)}",
                      "tracking.experiment=bench-optuna"), self.log)
        return sweep_efficiency_figures({arm: self.runs(f"bench-{arm}") for arm in ("grid", "optuna")},
                                        self.p["optuna_sampler"])

    # 7 -------------------------------------------------------------------------------------------
    def memory(self) -> dict:
        """The same 10-job multirun three times: in the sweep's process, each job in a new interpreter
        (spawned), and each job forked from a server that imported the libraries once (the default)."""
        grid = [f"method={self.p['memory_methods']}", f"data={self.p['memory_tasks']}",
                f"train.max_steps={self.p['memory_steps']}",
                "train.batch_size=16", f"eval.limit={self.p['grid_limit'] // 4}", "eval.fewshot_draws=1",
                f"data.dev_size={self.p['grid_limit'] // 4}",  # (as many development examples as test ones)
                "eval.cache=false", "tracking.log_adapter=false", *self.track]
        out = {}
        launchers = {"basic": ["hydra/launcher=basic"],
                     "spawn": ["hydra/launcher=fresh_process", "hydra.launcher.fork=false"],
                     "fresh_process": ["hydra/launcher=fresh_process"]}  # (forked from the server: the default)
        for launcher, chosen in launchers.items():
            experiment = f"bench-memory-{launcher}"
            seconds = run(sweep_cmd("-m", f"model={self.p['model']}", *chosen, *grid,
                                    f"tracking.experiment={experiment}"), self.log)
            runs = self.runs(experiment)
            jobs = {f"{r['params.method.name']}/{r['params.data.name']}": {
                "rss_at_start_mb": r["metrics.rss_at_start_mb"], "peak_rss_mb": r["metrics.peak_rss_mb"],
                **({"train_tokens_per_second": r["metrics.train_tokens_per_second"]}
                   if not math.isnan(r.get("metrics.train_tokens_per_second", math.nan)) else {})}
                for r in runs.to_dict("records")}
            starts = list(runs["metrics.rss_at_start_mb"])
            out[launcher] = {"jobs": jobs, "wall_seconds": seconds,  # (growth from the second job: the first warms up)
                             "rss_growth_mb": starts[-1] - starts[min(1, len(starts) - 1)],
                             "max_peak_rss_mb": max(runs["metrics.peak_rss_mb"])}
        jobs = len(out["basic"]["jobs"])
        for launcher in ("spawn", "fresh_process"):
            out[f"{launcher}_wall_ratio"] = out[launcher]["wall_seconds"] / out["basic"]["wall_seconds"]
            out[launcher]["start_up_seconds_per_job"] = (
                out[launcher]["wall_seconds"] - out["basic"]["wall_seconds"]) / jobs  # (beyond running in process)
        out["targets"] = "fork server: under 1 s of start-up per job, wall time within 1.05x of in-process, flat RSS"
        return out

    def start_up(self) -> dict:
        """A job's start-up beyond the sweep's own process: n-job multiruns of the tiny model's short
        LoRA jobs (so that the figure is the launcher's, not training's) with every job in the sweep's
        process (Hydra's basic launcher) and each forked from the server (the default), alternately,
        `start_up_repeats` times. The server's one-time imports count once per sweep, in its wall time."""
        out = {}
        for jobs in self.p["start_up_jobs"]:
            walls = {"basic": [], "fresh_process": []}
            for repeat in range(self.p["start_up_repeats"]):
                for launcher, seconds in walls.items():
                    name = f"bench-start-up-{jobs}-{launcher}-{repeat}"
                    seconds.append(run(sweep_cmd(
                        "-m", f"hydra/launcher={launcher}", "model=tiny", "method=lora",
                        f"seed={','.join(str(s) for s in range(1, jobs + 1))}", "train.max_steps=2",
                        "train.batch_size=4", "data.max_train_samples=32", "eval.limit=8", "data.dev_size=8",
                        "tracking.log_adapter=false", f"tracking.experiment={name}", f"hydra.sweep.dir={self.work}/{name}",
                        *self.track), self.log))
            basic, forked = median(walls["basic"]), median(walls["fresh_process"])
            out[f"{jobs}_jobs"] = {
                "basic_wall_seconds": basic, "fork_server_wall_seconds": forked,
                "start_up_seconds_per_job": (forked - basic) / jobs,
                "wall_ratio": median([f / b for b, f in zip(walls["basic"], walls["fresh_process"])])}
        out["targets"] = "under 1 s of start-up per job beyond the sweep's own process"
        out["note"] = ("medians of alternate runs; tiny LoRA jobs of about 2 s each, so the wall ratio is the "
                       "launcher's worst case (the memory row has SmolLM2's)")
        return out

    # 9 -------------------------------------------------------------------------------------------
    def rl_stage(self) -> dict:
        """One pipeline sweep (training only): the RL stages' generation and training throughput."""
        experiment = "bench-rl"
        run(sweep_cmd("-m", "experiment=rlhf", "stage=sft,reward,grpo,ppo", f"model={self.p['model']}", IN_PROCESS,
                      f"train.max_steps={self.p['rl_steps']}", "eval.enabled=false", f"tracking.experiment={experiment}",
                      f"hydra.sweep.dir={self.work}/{experiment}", *self.track), self.log)
        runs = {r["tags.stage"]: r for r in self.runs(experiment).to_dict("records")}
        ppo, grpo = runs["ppo"], runs["grpo"]
        rollout, training = ppo["metrics.rollout_tokens_per_second"], ppo["metrics.train_tokens_per_second"]
        return {"ppo_rollout_tokens_per_second": rollout, "ppo_train_tokens_per_second": training,
                "rollout_vs_training": rollout / training, "ppo_seconds": ppo["metrics.train_seconds"],
                "grpo_train_tokens_per_second": grpo["metrics.train_tokens_per_second"],
                "grpo_seconds": grpo["metrics.train_seconds"], "steps": self.p["rl_steps"],
                "note": "experiment=rlhf sizes (batch 8, 32 new tokens per reply, 2 PPO epochs, 4 GRPO generations per "
                        "prompt); PPO's rollout = reply tokens generated per second of generate(); its training "
                        "tokens = prompt + reply tokens through forward and backward, per epoch, over the whole step"}

    def team_study(self) -> dict:
        from scripts.services import throwaway

        n = self.p["team_trials"]
        study = ["-m", "hydra/sweeper=optuna", IN_PROCESS, "model=tiny", "data.max_train_samples=32", "train.batch_size=4",
                 f"train.max_steps={self.p['team_steps']}", "eval.limit=8", f"hydra.sweeper.n_trials={n}",
                 "hydra.sweeper.sampler=random", "lora.r=choice(1,2,4,8)", "train.lr=tag(log,interval(1e-4,1e-2))"]

        def timed(name: str, env: dict, *extra: str) -> float:
            start = time.perf_counter()
            with self.log.open("a") as out:
                subprocess.run(sweep_cmd(*study, f"hydra.sweeper.study_name={name}", f"tracking.experiment={name}",
                                         f"hydra.sweep.dir={self.work}/{name}", *extra), cwd=ROOT, stdout=out,
                               stderr=subprocess.STDOUT, check=True, env=env)
            return time.perf_counter() - start

        embedded = timed("team-embedded", dict(os.environ), f"hydra.sweeper.storage={self.work}/team.journal",
                         *self.track)
        per_hour = lambda seconds: n / seconds * 3600  # noqa: E731
        out = {"trials": n, "embedded_seconds": embedded, "trials_per_hour": {"embedded_1_worker": per_hour(embedded)}}
        if self.p["team_servers"]:  # (quick: no servers; the team and fault tests run them already)
            with throwaway("bench-services-") as team:
                local = {k: v for k, v in os.environ.items() if k not in team}
                server_1 = timed("team-server-1", local | team)
                server_2 = timed("team-server-2", local | team, "hydra.sweeper.n_jobs=2")
            out |= {"server_1_worker_seconds": server_1, "server_2_workers_seconds": server_2,
                    "server_overhead_seconds_per_trial": (server_1 - embedded) / n,
                    "two_workers_vs_one": server_1 / server_2}
            out["trials_per_hour"] |= {"server_1_worker": per_hour(server_1), "server_2_workers": per_hour(server_2)}
        return out | {"note": "wall time of `python sweep.py -m` with the Optuna sweeper (random sampler, the tiny "
                              "model, start-up included); embedded = journal file + SQLite, server = PostgreSQL study "
                              "+ `mlflow server` over PostgreSQL, both on this machine"}


def sweep_efficiency_figures(runs_by_arm: dict, sampler: str) -> dict:
    """Each arm's compute (training steps run, pruned trials' included) and the configuration it
    chooses as a user would, on its development score, with that choice's one test score."""
    client, out = mlflow.MlflowClient(), {}
    for arm, runs in runs_by_arm.items():
        runs = runs[runs[tag_column(METHOD)] != STUDY_METHOD]
        spent = sum(max((h.step for h in client.get_metric_history(run_id, "train/loss")), default=0)
                    for run_id in runs["run_id"])
        finished = runs.dropna(subset=["metrics.dev/sst2/acc"])
        chosen = finished.loc[finished["metrics.dev/sst2/acc"].idxmax()]
        out[arm] = {"runs": len(runs), "train_steps": spent, "chosen_dev_acc": float(chosen["metrics.dev/sst2/acc"]),
                    "chosen_test_acc": float(chosen["metrics.sst2/acc"])}
    grid, opt = out["grid"], out["optuna"]
    gap = round(100 * (grid["chosen_test_acc"] - opt["chosen_test_acc"]), 9)  # (0.80 - 0.79 is 1.0000000000000009)
    return out | {"optuna_sampler": sampler, "compute_ratio": opt["train_steps"] / grid["train_steps"],
                  "test_gap_points": gap, "target": "the configuration chosen on development scores within 1 test "
                                                    "point of the grid's choice for at most half the compute",
                  "met": opt["train_steps"] <= grid["train_steps"] / 2 and gap <= 1}
