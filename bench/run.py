"""The benchmark suite: `make bench` (SmolLM2-135M, about 1 h 50 min on 2 CPU cores) or
`python bench/run.py --quick` (the tiny model, ~2 min; what the test runs).

These machines are noisy, so every figure is a ratio of two things measured side by side in this
one run, with the raw timings (median of the repeats) beside it. Writes bench/results.json and
bench/results.md (or --out).

1. harness overhead   `python sweep.py` (LoRA, no scoring) vs bench/bare_lora.py (plain torch loop)
2. model start-up     cached safetensors load vs the first GGUF conversion
3. scoring            in-process lm-eval on the trained model vs saving and reloading the adapter;
                      zero-shot vs k-shot cost per example (prefix-cached, and lm-eval's own HFLM)
   baseline panel     3 templates x {0-shot, 4-shot x 3 draws}, calibrated (so both variants), on
                      `panel_examples` SST-2 examples: lm-eval's HFLM vs the prefix-cached scorer
   strongest search   the strongest baseline's search (18 variants): every variant on the whole
                      development slice (the protocol before the race: 200 examples, p_threshold=0)
                      vs the race (sweep/scoring/race.py) on twice as many: seconds, and what each chose
4. padding waste      pad fraction and tokens/s, random vs length-grouped batches
   training features  tokens/s with and without the answer-only LM head, and bf16 autocast
5. sweep efficiency   a 12-configuration grid vs the Optuna sweeper with a median pruner on the same
                      space (its grid sampler by default: every configuration is started, the
                      pruner stops the weak ones early); each arm is judged by the one test score of
                      the configuration its development scores choose
6. peer comparison    tokens/s of our training vs TRL's SFTTrainer on the same LoRA SFT
8. memory             one multirun of 10 jobs (5 methods x SST-2 and RTE): each job's peak RSS and
                      tokens/s, and the RSS each job starts from, with every job in the sweep's process
                      (Hydra's basic launcher) vs each in a fresh one (hydra/launcher=fresh_process)
9. RL stage           the RLHF pipeline's RL step (sft -> reward -> grpo, ppo; experiment=rlhf, no
                      scoring): PPO's rollout (generation) tokens/s against its training tokens/s
                      (forward + backward over prompt and reply), and GRPO's training tokens/s
10. judged KL         the KL pass of judged scoring (log p(reply | prompt) under the policy) on the
                      instruction tasks' prompts in the chat template with their reference replies:
                      every position's logits of right-padded batches in input order (as before) vs
                      sweep/rlhf/judging.py's length-sorted, left-padded batches with the last positions'
                      logits only: seconds and extra peak memory of each, and their largest difference
7. team study         finished trials per hour on the team's servers (PostgreSQL study, MLflow
                      server) with 1 and 2 workers, and the per-trial cost of their round trips
                      against the embedded stores (journal file, SQLite): the tiny model's short
                      trials, so the figure is the harness and the stores, not training
"""

from __future__ import annotations

import argparse
import json
import math
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
import torch  # noqa: E402

import sweep  # noqa: E402,F401
from sweep.config import compose_config  # noqa: E402
from sweep.runtime.machine import describe as describe_machine  # noqa: E402
from sweep.tracking.records import STUDY_METHOD  # noqa: E402

FULL = {"model": "smollm2_135m", "steps": 30, "repeats": 1, "eval_limit": 100, "grid_steps": 60,
        "grid_limit": 200, "grid_space": {"lora.r": "2,8,16", "train.lr": "1e-4,3e-4,1e-3,3e-3"}, "optuna_trials": 12, "optuna_sampler": "grid", "train_samples": 2000,
        "panel_examples": 200, "team_trials": 8, "team_steps": 4, "team_servers": True, "memory_steps": 4,
        "memory_methods": "zero_shot,few_shot,lora,prompt_tuning,full", "memory_tasks": "sst2,rte", "rl_steps": 8,
        "kl_batch_size": 32, "search_dev": (200, 400), "search_startup": 50, "search_grid": [], "roofline_rows": 1024}
QUICK = {"model": "tiny", "steps": 10, "repeats": 1, "eval_limit": 16, "grid_steps": 4, "grid_limit": 16,
         "grid_space": {"lora.r": "2,8", "train.lr": "1e-3"}, "optuna_trials": 1, "optuna_sampler": "grid", "train_samples": 64, "panel_examples": 16,
         "team_trials": 2, "team_steps": 2, "team_servers": False, "memory_steps": 2,
         "memory_methods": "lora", "memory_tasks": "sst2", "rl_steps": 1,  # (memory: one job per launcher)
         "kl_batch_size": 8, "search_dev": (16, 32), "search_startup": 4, "roofline_rows": 1024,
         # (2 of the panel's variants, zero- and few-shot: a smoke test of the search, in seconds)
         "search_grid": ["method.search.template=[default]", "method.search.num_fewshot=[0,2]",
                         "method.search.fewshot_sampler=[random]", "method.search.calibrate=[false]"]}  # (the old KL pass at 32 rows of the longest seed task holds 9 GB: too much beside other tests)


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


class Bench:
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

    # 1 -------------------------------------------------------------------------------------------
    def harness_overhead(self) -> dict:
        from sweep.pipeline.build import build
        from sweep.training.models import load_model_and_tokenizer
        from sweep.training.sft import use_bf16

        steps = self.p["steps"]
        same = ["train.sampling=sequential", "train.answer_only_logits=false", f"train.max_steps={steps}",
                "train.logging_steps=5", "eval.enabled=false", "tracking.log_adapter=false", "lora.dropout=0"]
        cfg = self.cfg(*same)
        built = build(cfg)
        n = steps * cfg.train.batch_size
        examples = [dict(built.train_dataset[i % len(built.train_dataset)]) for i in range(n)]  # epochs, in order
        (self.work / "examples.json").write_text(json.dumps(examples))
        base, _ = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)  # the weights the harness loads
        base.save_pretrained(self.work / "bare-model")
        spec = {"model": str(self.work / "bare-model"), "tokenizer": built.tokenizer.name_or_path, "seed": cfg.seed,
                "r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": 0.0,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "examples": str(self.work / "examples.json"),
                "lr": cfg.train.lr, "batch_size": cfg.train.batch_size, "steps": steps,
                "warmup_steps": math.ceil(cfg.train.warmup_ratio * steps), "bf16": use_bf16(cfg.train.bf16)}
        (self.work / "bare.json").write_text(json.dumps(spec))
        del built, base

        harness_steps, harness_startup, bare_steps, bare_startup = [], [], [], []
        for _ in range(self.p["repeats"]):
            wall = run(sweep_cmd(*self.common, *same, *self.track, "tracking.experiment=bench-overhead"), self.log)
            r = self.runs("bench-overhead").iloc[-1]
            history = mlflow.MlflowClient().get_metric_history(r["run_id"], "train/step_seconds")
            harness_steps.append(median([h.value for h in history if h.step > 1]))  # 5-step windows after step 1
            harness_startup.append(wall - r["metrics.train_seconds"])
            out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare_lora.py"), str(self.work / "bare.json")],
                                 cwd=ROOT, capture_output=True, text=True, check=True)
            bare = json.loads(out.stdout.strip().splitlines()[-1])
            bare_steps.append(statistics.mean(bare["step_seconds"][1:]))
            bare_startup.append(bare["startup_seconds"])
        ratio = median(harness_steps) / median(bare_steps)
        return {"harness_step_seconds": median(harness_steps), "bare_step_seconds": median(bare_steps),
                "ratio": ratio, "target": "<= 1.05", "met": ratio <= 1.05,
                "harness_startup_seconds": median(harness_startup), "bare_startup_seconds": median(bare_startup),
                "note": "seconds per step after the first (harness: median of its logged 5-step windows, MLflow "
                        "writes included; bare: mean), same examples in the same order, full logits, bf16 autocast "
                        "as the harness decides; start-up = process wall time minus training"}

    # 2 -------------------------------------------------------------------------------------------
    def model_startup(self) -> dict:
        from transformers import AutoModelForCausalLM

        from sweep.training.models import prepare_gguf_model

        gguf = compose_config(["model=smollm2_135m"]).model.gguf
        cache = self.work / "cache"
        start = time.perf_counter()
        folder = prepare_gguf_model(gguf, cache)
        convert = time.perf_counter() - start
        loads = []
        for _ in range(self.p["repeats"]):
            start = time.perf_counter()
            AutoModelForCausalLM.from_pretrained(folder)
            loads.append(time.perf_counter() - start)
        return {"gguf_conversion_seconds": convert, "cached_load_seconds": median(loads),
                "ratio": median(loads) / convert, "target": "cached load a few seconds",
                "met": median(loads) < 5}

    # 3 -------------------------------------------------------------------------------------------
    def scoring(self) -> dict:
        from peft import PeftModel

        from sweep.pipeline.build import build, load_project_tasks
        from sweep.scoring.evaluate import Prompting, make_lm, score
        from sweep.training.models import load_model_and_tokenizer
        from sweep.training.sft import train

        cfg = self.cfg("train.max_steps=2")
        built = build(cfg)
        with tempfile.TemporaryDirectory() as out:
            train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, out)
        limit, k = self.p["eval_limit"], cfg.eval.num_fewshot

        def timed(fn):
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        stock = make_lm(built.model, built.tokenizer, cfg.eval.batch_size, prefix_cache=False)

        def in_process(shots, lm=built.lm):
            # Fresh task objects (loaded outside the timing): lm-eval keeps num_fewshot=0 once a task
            # object was scored zero-shot.
            tm, tasks = load_project_tasks(cfg)
            tasks = {name: tasks[name] for name in built.eval_tasks}
            return lambda: score(lm, tm, tasks, Prompting(num_fewshot=shots, seed=cfg.seed), limit, False)

        def reload_then_score():
            with tempfile.TemporaryDirectory() as folder:
                built.model.save_pretrained(folder)
                base, tok = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
                model = PeftModel.from_pretrained(base, folder).eval()
                score(make_lm(model, tok, cfg.eval.batch_size), built.task_manager, built.eval_tasks,
                      Prompting(seed=cfg.seed), limit, False)

        reps = range(self.p["repeats"])
        zero = median([timed(in_process(0)) for _ in reps])
        reload = median([timed(reload_then_score) for _ in reps])
        kshot = median([timed(in_process(k)) for _ in reps])
        kshot_stock = median([timed(in_process(k, stock)) for _ in reps])
        return {"in_process_seconds": zero, "save_reload_seconds": reload, "ratio": reload / zero,
                "zero_shot_seconds_per_example": zero / limit, f"{k}_shot_seconds_per_example": kshot / limit,
                "k_shot_vs_zero_shot": kshot / zero, "k_shot_lm_eval_hflm_vs_zero_shot": kshot_stock / zero,
                "target": "k-shot at most 1.5x zero-shot per example", "examples": limit}

    def baseline_panel(self) -> dict:
        """The cost of a full baseline panel, scored with lm-eval's own HFLM and with the prefix cache."""
        from sweep.pipeline.build import load_project_tasks
        from sweep.scoring.evaluate import Prompting, make_lm, score
        from sweep.training.models import load_model_and_tokenizer

        cfg = self.cfg("method=zero_shot")
        model, tok = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
        n = self.p["panel_examples"]
        scorers = {label: make_lm(model, tok, cfg.eval.batch_size, prefix_cache=cached)
                   for label, cached in (("lm_eval_hflm", False), ("prefix_cached", True))}
        seconds, accuracy, per_pass = dict.fromkeys(scorers, 0.0), {}, {}
        for template in ("default", "plain", "chat"):
            for k, draws in ((0, 1), (4, 3)):
                # the two scorers take turns on each pass, so a load that comes and goes hits both alike
                for label, lm in scorers.items():
                    tm, tasks = load_project_tasks(cfg, template)  # (loading the data is not timed)
                    prompting = Prompting(num_fewshot=k, draws=draws, calibrate=True, seed=cfg.seed)
                    start = time.perf_counter()
                    scores = score(lm, tm, {"sst2": tasks["sst2"]}, prompting, n, False)
                    elapsed = time.perf_counter() - start
                    seconds[label] += elapsed
                    per_pass.setdefault(f"{label}/k{k}", []).append(elapsed / draws)
                    accuracy[f"{label}/{template}/k{k}"] = scores.metrics["sst2/acc"]
        mean = {key: statistics.fmean(v) for key, v in per_pass.items()}
        same = all(accuracy[k] == accuracy[k.replace("lm_eval_hflm", "prefix_cached")] for k in accuracy
                   if k.startswith("lm_eval_hflm"))
        return {"examples": n, "passes": 3 * (1 + 3), "lm_eval_hflm_seconds": seconds["lm_eval_hflm"],
                "prefix_cached_seconds": seconds["prefix_cached"],
                "speedup": seconds["lm_eval_hflm"] / seconds["prefix_cached"], "same_accuracies": same,
                "4_shot_vs_zero_shot": {label: mean[f"{label}/k4"] / mean[f"{label}/k0"]
                                        for label in ("lm_eval_hflm", "prefix_cached")},
                "target": "4-shot at most 1.5x zero-shot per example (prefix_cached)"}

    def strongest_search(self) -> dict:
        """The strongest baseline's search without the race on `search_dev[0]` development examples vs
        with it on `search_dev[1]`: the race must spend no more time on twice the examples."""
        from sweep.pipeline.build import prompting_of
        from sweep.pipeline.score import eval_tasks
        from sweep.scoring.baselines import Search, strongest
        from sweep.scoring.evaluate import make_lm
        from sweep.training.models import load_model_and_tokenizer

        small, large = self.p["search_dev"]
        cfg = self.cfg("method=strongest_baseline")
        lm = make_lm(*load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed), cfg.eval.batch_size)
        out = {}
        for label, dev, p_threshold in (("full_search", small, 0.0), ("race", large, 0.05)):
            cfg = self.cfg("method=strongest_baseline", *self.p["search_grid"], f"data.dev_size={dev}",
                           f"method.search.p_threshold={p_threshold}",
                           f"method.search.n_startup_steps={self.p['search_startup']}", "method.search.oracle=none")
            search = Search(cfg.method.search, lambda k, cfg=cfg: prompting_of(cfg, k), dev,
                            self.p["eval_limit"], False)
            start = time.perf_counter()
            choice = strongest(search, lm, lambda template, cfg=cfg: eval_tasks(cfg, template))
            dropped = [r["variant"] for r in choice.panel if r["pruned_at"]]
            out[label] = {"dev_examples": dev, "seconds": time.perf_counter() - start, "chosen": choice.best.label(),
                          "dev_score": choice.dev_metrics["dev/sst2/acc"], "test_score": choice.scores.metrics["sst2/acc"],
                          "variants_dropped": len(dropped)}
        return out | {"race_vs_full_time": out["race"]["seconds"] / out["full_search"]["seconds"],
                      "target": "the race on twice the development examples takes no longer (ratio <= 1)"}

    # 4 -------------------------------------------------------------------------------------------
    def padding(self) -> dict:
        from transformers import DataCollatorForSeq2Seq, Trainer

        from sweep.pipeline.build import build
        from sweep.training.sft import train, training_arguments

        out = {}
        for sampling in ("random", "group_by_length"):
            cfg = self.cfg(f"train.sampling={sampling}", f"train.max_steps={self.p['steps']}")
            built = build(cfg)
            with tempfile.TemporaryDirectory() as folder:
                trainer = Trainer(model=built.model, args=training_arguments(cfg.train, cfg.seed, folder),
                                  train_dataset=built.train_dataset,
                                  data_collator=DataCollatorForSeq2Seq(built.tokenizer, padding=True))
                pads = total = 0
                for i, batch in enumerate(trainer.get_train_dataloader()):
                    pads += int((batch["attention_mask"] == 0).sum())
                    total += batch["attention_mask"].numel()
                    if i + 1 == self.p["steps"]:
                        break
                rates = [train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed,
                               folder).tokens_per_second for _ in range(self.p["repeats"])]
            out[sampling] = {"pad_fraction": pads / total, "tokens_per_second": median(rates)}
        out["tokens_per_second_ratio"] = out["group_by_length"]["tokens_per_second"] / out["random"]["tokens_per_second"]
        return out

    # 4b ------------------------------------------------------------------------------------------
    def training_features(self) -> dict:
        """Tokens/s with and without the answer-only LM head, and with and without bf16 autocast."""
        from sweep.training.sft import bf16_is_fast

        variants = {"default (answer-only head, bf16 auto)": [],
                    "full logits": ["train.answer_only_logits=false"],
                    "fp32 (no autocast)": ["train.bf16=false"]}
        out = {}
        for label, overrides in variants.items():
            out[label] = {"tokens_per_second": self.training_rate(self.cfg(f"train.max_steps={self.p['steps']}",
                                                                           *overrides))}
        default = out["default (answer-only head, bf16 auto)"]["tokens_per_second"]
        out["answer_only_speedup"] = default / out["full logits"]["tokens_per_second"]
        out["bf16_speedup"] = default / out["fp32 (no autocast)"]["tokens_per_second"]
        out["bf16_is_fast_here"] = bf16_is_fast()
        return out

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

    # 6 -------------------------------------------------------------------------------------------
    def trl(self) -> dict:
        import datasets
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        from sweep.data.examples import training_pairs
        from sweep.pipeline.build import load_project_tasks
        from sweep.training.models import load_model_and_tokenizer
        from sweep.training.sft import use_bf16

        cfg = self.cfg(f"train.max_steps={self.p['steps']}", "lora.dropout=0")
        ours = self.training_rate(cfg)
        _, tasks = load_project_tasks(cfg)
        pairs = training_pairs(tasks["sst2"], cfg.data.train_split, cfg.data.max_train_samples, cfg.seed)
        data = datasets.Dataset.from_list([{"prompt": c, "completion": a} for c, a in pairs])
        # TRL 1.x's SFTConfig turns gradient checkpointing on and samples batches at random by default;
        # a user who wants speed turns the first off and groups batches by length, as the harness does.
        settings = {"defaults": {},
                    "tuned": {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}}
        theirs = {label: [] for label in settings}
        for label, extra in settings.items():
            for _ in range(self.p["repeats"]):
                model, tok = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
                with tempfile.TemporaryDirectory() as folder:
                    args = SFTConfig(output_dir=folder, max_steps=cfg.train.max_steps, per_device_train_batch_size=8,
                                     learning_rate=cfg.train.lr, bf16=use_bf16(cfg.train.bf16), seed=cfg.seed,
                                     report_to="none", save_strategy="no", logging_steps=1000,
                                     include_num_input_tokens_seen="non_padding",
                                     use_cpu=not torch.cuda.is_available(), max_length=cfg.train.max_seq_length,
                                     dataloader_num_workers=0, **extra)
                    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                      lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
                    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                         peft_config=lora)
                    start = time.perf_counter()
                    trainer.train()
                    theirs[label].append(trainer.state.num_input_tokens_seen / (time.perf_counter() - start))
        import trl

        rates = {label: median(r) for label, r in theirs.items()}
        ratio = ours / rates["tuned"]
        return {"ours_tokens_per_second": ours, "trl_tokens_per_second": rates["defaults"],
                "trl_tuned_tokens_per_second": rates["tuned"], "ratio_to_defaults": ours / rates["defaults"],
                "ratio": ratio, "target": ">= 1.3 against tuned TRL", "met": ratio >= 1.3,
                "trl_version": trl.__version__, "trl_tuned": settings["tuned"],
                "note": "same model, LoRA (r, alpha, qkvo), examples, steps, batch 8, seed, bf16 setting; "
                        "TRL trains on prompt-completion pairs with its completion-only loss; defaults: SFTConfig's "
                        "own (gradient checkpointing on, random batches); tuned: both switched as the harness runs"}


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

    # 10 ------------------------------------------------------------------------------------------
    def judged_kl(self) -> dict:
        from sweep.pipeline.build import build
        from sweep.rlhf.judging import sequence_logprobs
        from sweep.runtime import memory

        cfg = self.cfg("experiment=instruction_data", "method=lora", f"eval.limit={self.p['eval_limit']}",
                       f"eval.batch_size={self.p['kl_batch_size']}")
        built = build(cfg)
        contexts, replies = [], []
        for task in built.eval_tasks.values():
            for doc in list(task.eval_docs)[:self.p["eval_limit"]]:
                chat = [{"role": "user", "content": task.doc_to_text(doc)}]
                contexts.append(built.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
                reply = built.tokenizer(task.doc_to_target(doc), add_special_tokens=False).input_ids[:KL_REPLY_TOKENS]
                replies.append(built.tokenizer.decode(reply))
        memory.map_large_blocks()
        out = {"rows": len(contexts), "batch_size": cfg.eval.batch_size}
        for label, fn in (("whole_sequence", whole_sequence_logprobs), ("last_positions", sequence_logprobs)):
            memory.release()
            memory.reset_peak()
            start_mb, start = memory.resident_mb(), time.perf_counter()
            out[label] = {"logprobs": fn(built.model, built.lm, contexts, replies, cfg.eval.batch_size),
                          "seconds": time.perf_counter() - start}
            out[label]["extra_peak_mb"] = memory.peak_mb()["peak_rss_mb"] - start_mb
        old, new = (out[k].pop("logprobs") for k in ("whole_sequence", "last_positions"))
        out["max_abs_difference"] = max(abs(a - b) for a, b in zip(old, new))
        out["speedup"] = out["whole_sequence"]["seconds"] / out["last_positions"]["seconds"]
        out["extra_memory_ratio"] = out["whole_sequence"]["extra_peak_mb"] / max(out["last_positions"]["extra_peak_mb"], 1.0)
        return out

    # 11 ------------------------------------------------------------------------------------------
    def generation(self) -> dict:
        """The instruction tasks' generation pass (the base model's greedy replies to every
        instruction of eval.limit per task): lm-eval's HFLM (batches of eval.batch_size, padded to
        their longest prompt) vs the harness's token-budget batches; the replies must be equal."""
        from sweep.pipeline.build import build, load_project_tasks
        from sweep.rlhf.judging import replies
        from sweep.scoring.evaluate import Prompting, make_lm, score

        cfg = self.cfg("experiment=instruction_data", "method=zero_shot", f"eval.limit={self.p['eval_limit']}")
        built = build(cfg)
        out, texts = {"examples_per_task": self.p["eval_limit"], "batch_size": cfg.eval.batch_size}, {}
        for label, batched in (("lm_eval_hflm", False), ("length_batched", True)):
            lm = make_lm(built.model, built.tokenizer, cfg.eval.batch_size, prefix_cache=batched, length_batched=batched)
            seconds = []
            for _ in range(self.p["repeats"]):
                tm, tasks = load_project_tasks(cfg)  # (fresh task objects, loaded outside the timing)
                tasks = {name: tasks[name] for name in built.eval_tasks}
                start = time.perf_counter()
                results = score(lm, tm, tasks, Prompting(seed=cfg.seed), self.p["eval_limit"], True).results
                seconds.append(time.perf_counter() - start)
            texts[label] = {name: {i: r for i, (_, _, r) in replies(results, name).items()} for name in tasks}
            out[f"{label}_seconds"] = median(seconds)
        out["replies_equal"] = texts["lm_eval_hflm"] == texts["length_batched"]
        out["speedup"] = out["lm_eval_hflm_seconds"] / out["length_batched_seconds"]
        out["target"] = "at least 2x, the same replies"
        return out

    # 12 ------------------------------------------------------------------------------------------
    def roofline(self) -> dict:
        """How close to the machine's limit: its own matmul throughput (GEMMs of the model's shapes,
        best of a few runs, fp32 and bf16) beside the harness's training FLOP/s (6 x parameters x
        trained tokens/s, as the MFU metric counts) and a scoring pass's (2 x parameters x tokens/s
        of a no-grad forward pass over batches as lm-eval runs them)."""
        from sweep.pipeline.build import build
        from sweep.training.sft import use_bf16

        cfg = self.cfg(f"train.max_steps={self.p['steps']}")
        built = build(cfg)
        shape, params = built.model.config, sum(p.numel() for p in built.model.parameters())
        rows = self.p["roofline_rows"]
        peak = {}
        for dtype in (torch.float32, torch.bfloat16):
            best = 0.0
            for m, k, n in ((rows, shape.hidden_size, shape.intermediate_size),
                            (rows, shape.hidden_size, shape.hidden_size)):
                a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
                for _ in range(3):  # (warm-up)
                    a @ b
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(10):
                        a @ b
                    best = max(best, 2 * m * k * n * 10 / (time.perf_counter() - start))
            peak[str(dtype).removeprefix("torch.")] = best
        training = self.training_rate(cfg)  # trained tokens/s (LoRA, bf16 autocast where it is fast)
        train_dtype = "bfloat16" if use_bf16(cfg.train.bf16) else "float32"
        ids = torch.randint(0, shape.vocab_size, (cfg.eval.batch_size, 128))
        with torch.no_grad():
            built.model(ids[:2])
            start = time.perf_counter()
            for _ in range(self.p["repeats"]):
                built.model(ids)
            scoring = ids.numel() * self.p["repeats"] / (time.perf_counter() - start)
        return {"peak_matmul_flops": peak, "parameters": params,
                "training": {"tokens_per_second": training, "flops": 6 * params * training, "dtype": train_dtype,
                             "fraction_of_peak": 6 * params * training / peak[train_dtype]},
                "scoring": {"tokens_per_second": scoring, "flops": 2 * params * scoring, "dtype": "float32",
                            "fraction_of_peak": 2 * params * scoring / peak["float32"]},
                "note": "the peak is this machine's own GEMM throughput at the model's shapes, not a datasheet's; "
                        "LoRA computes no gradients of frozen weights, so 6 x parameters overstates its work (4x)"}

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
        runs = runs[runs["tags.method"] != STUDY_METHOD]
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


KL_REPLY_TOKENS = 128  # the instruction tasks' max_gen_toks: a reply is at most this long


@torch.inference_mode()
def whole_sequence_logprobs(model, lm, contexts: list[str], replies: list[str], batch_size: int) -> list[float]:
    """The KL pass as it was: right-padded batches in input order, every position's logits."""
    out = []
    for i in range(0, len(contexts), batch_size):
        rows = [(lm.tok_encode(c), lm.tok_encode(r, add_special_tokens=False))
                for c, r in zip(contexts[i:i + batch_size], replies[i:i + batch_size])]
        width = max(len(c) + len(r) for c, r in rows)
        ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id)
        attention = torch.zeros_like(ids)
        for j, (c, r) in enumerate(rows):
            ids[j, :len(c) + len(r)] = torch.tensor(c + r)
            attention[j, :len(c) + len(r)] = 1
        logits = model(input_ids=ids, attention_mask=attention).logits
        for j, (c, r) in enumerate(rows):
            picked = torch.log_softmax(logits[j, len(c) - 1:len(c) + len(r) - 1].float(), -1)
            out.append(float(picked[torch.arange(len(r)), torch.tensor(r, dtype=torch.long)].sum()) if r else 0.0)
    return out


def markdown(results: dict) -> str:
    lines = [f"# Benchmarks ({results['machine']}, {results['mode']})", ""]
    if "whole_run_seconds" in results:
        lines += [f"One whole run: {results['whole_run_seconds'] / 60:.0f} min"
                  + (f"; measured again since: {', '.join(sorted(results['measured_again']))}"
                     if results.get("measured_again")
                     else "") + ".", ""]
    for name, figures in results["benchmarks"].items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        for key, value in _flat(figures):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def _flat(d: dict, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def write(results: dict, out: Path) -> None:
    """results.json and results.md, after every row (a run stopped midway keeps the rows it measured)."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))


BENCHMARKS = ("harness_overhead", "model_startup", "scoring", "baseline_panel", "strongest_search", "padding",
              "training_features", "sweep_efficiency", "trl", "team_study", "memory", "rl_stage", "judged_kl",
              "generation", "roofline")


def carried_over(previous: dict, results: dict, only: list[str]) -> dict:
    """A partial run's results: the previous run's rows and settings, with the rows it measures again
    named (and their settings kept apart), so that a file never passes off a mix as one run."""
    if previous.get("mode") != results["mode"]:
        return results
    this_run = {"machine": results["machine"], "params": results["params"]}
    again = {**previous.get("measured_again", {}), **{name: this_run for name in only}}
    return previous | {"benchmarks": dict(previous["benchmarks"]), "measured_again": again}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the tiny model and few steps (a smoke test)")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                    help=f"run these benchmarks only, keeping the other rows of --out's results.json: {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json and results.md")
    ap.add_argument("--panel-examples", type=int, help="examples per pass of the baseline panel (default: 200, "
                                                       "quick: 16); lm-eval's own HFLM takes about an hour for all 872")
    ap.add_argument("--repeats", type=int, help="repeats of each timing, their median reported (default: 1)")
    a = ap.parse_args(argv)
    params = dict(QUICK if a.quick else FULL)
    if a.repeats:
        params["repeats"] = a.repeats
    if a.panel_examples:
        params["panel_examples"] = a.panel_examples
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": describe_machine(), "mode": "quick (tiny model)" if a.quick else f"full ({params['model']})",
               "params": params, "benchmarks": {}}
    if a.only and (out / "results.json").is_file():
        results = carried_over(json.loads((out / "results.json").read_text()), results, a.only)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        bench = Bench(params, Path(work))
        for name in a.only or BENCHMARKS:
            start = time.perf_counter()
            print(f"[bench] {name} ...", flush=True)
            results["benchmarks"][name] = getattr(bench, name)() | {"bench_seconds": time.perf_counter() - start}
            print(f"[bench] {name}: {json.dumps(results['benchmarks'][name])}", flush=True)
            write(results, out)
    if not a.only:
        write(results | {"whole_run_seconds": time.perf_counter() - began}, out)
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
