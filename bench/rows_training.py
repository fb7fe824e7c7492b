"""Benchmark rows of training: harness overhead, model start-up, padding, training features, the peer
(TRL), the roofline."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time

import mlflow
import torch

from bench.common import ROOT, BenchBase, compose_config, median, run, sweep_cmd

# TRL packs into rows of max_length: on the CPU a long row only adds attention work (rows of 512 tokens:
# 90 tokens/s against 211 padded, session profile), so the packed variant packs SST-2's examples into 128.
PACKED_ROW = 128


class TrainingRows(BenchBase):
    # 1 -------------------------------------------------------------------------------------------
    def harness_overhead(self) -> dict:
        from sweep.pipeline.build import build
        from sweep.training.models import load_model_and_tokenizer
        from sweep.training.sft import longest_row, training_attention, use_bf16

        steps = self.p["overhead_steps"]  # (at least 20: the harness's figure is a median of 5-step windows)
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
                "warmup_steps": math.ceil(cfg.train.warmup_ratio * steps), "bf16": use_bf16(cfg.train.bf16),
                "attn_implementation": training_attention(cfg.train.attn_implementation,
                                                          longest_row(built.train_dataset, cfg.train))
                or cfg.model.attn_implementation}
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
                        "and attention as the harness decides; start-up = process wall time minus training"}

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

    # 4 -------------------------------------------------------------------------------------------
    def padding(self) -> dict:
        """Pad fraction and training tokens/s of padded batches, random and length-grouped, beside
        padding-free ones (train.padding_free: one flattened row, attention kept within each example)."""
        from transformers import Trainer

        from sweep.pipeline.build import build
        from sweep.training.sft import batch_collator, train, training_arguments

        variants = {"random": ("random", False), "group_by_length": ("group_by_length", False),
                    "padding_free": ("random", True), "padding_free_grouped": ("group_by_length", True)}
        out = {}
        for label, (sampling, padding_free) in variants.items():
            cfg = self.cfg(f"train.sampling={sampling}", f"train.padding_free={str(padding_free).lower()}",
                           f"train.max_steps={self.p['steps']}")
            built = build(cfg)
            with tempfile.TemporaryDirectory() as folder:
                pads = total = 0
                if not padding_free:  # (a flattened batch has none to count)
                    trainer = Trainer(model=built.model, args=training_arguments(cfg.train, cfg.seed, folder),
                                      train_dataset=built.train_dataset,
                                      data_collator=batch_collator(built.tokenizer, padding_free=False))
                    for i, batch in enumerate(trainer.get_train_dataloader()):
                        pads += int((batch["attention_mask"] == 0).sum())
                        total += batch["attention_mask"].numel()
                        if i + 1 == self.p["steps"]:
                            break
                rates = [train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed,
                               folder).tokens_per_second for _ in range(self.p["repeats"])]
            out[label] = {"pad_fraction": pads / total if total else 0.0, "tokens_per_second": median(rates)}
        grouped = out["group_by_length"]["tokens_per_second"]
        out["tokens_per_second_ratio"] = grouped / out["random"]["tokens_per_second"]
        out["padding_free_ratio"] = max(out["padding_free"]["tokens_per_second"],
                                        out["padding_free_grouped"]["tokens_per_second"]) / grouped
        out["note"] = ("tokens/s of non-padding tokens; padding_free_ratio: the faster padding-free variant over "
                       "length-grouped padded batches (> 1: padding-free pays)")
        return out

    def compiled_step(self) -> dict:
        """The training step compiled (train.torch_compile: torch.compile, inductor) vs eager, both on
        batches rounded up to a multiple of 64 tokens (train.pad_to_multiple_of: a bounded set of
        shapes to compile for), each step timed on the same batches. Compile seconds: the steps that
        compiled, beyond what those steps took eager; the saving: the median per-step difference over
        the other steps; break-even: compile seconds / saving, in steps (none if a step saves nothing).
        `compiled_max_seq_length` (the session profile's 64): examples cut to it, so one shape, one
        compilation (a whole run meets up to max_seq_length / 64 of them)."""
        from transformers import TrainerCallback

        from sweep.pipeline.build import build
        from sweep.training.sft import train

        class StepTimes(TrainerCallback):
            def __init__(self):
                self.seconds = []

            def on_step_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.seconds.append(time.perf_counter() - self.start)

        times = {}
        for label in ("eager", "compiled"):
            cut = self.p["compiled_max_seq_length"]
            cfg = self.cfg(f"train.max_steps={self.p['steps']}", "train.pad_to_multiple_of=64",
                           f"train.torch_compile={str(label == 'compiled').lower()}",
                           *([f"train.max_seq_length={cut}"] if cut else []))
            built, timer = build(cfg), StepTimes()
            with tempfile.TemporaryDirectory() as folder:
                train(built.model, built.tokenizer, built.train_dataset, cfg.train, cfg.seed, folder, callbacks=[timer])
            times[label] = timer.seconds
        eager, compiled = times["eager"], times["compiled"]
        compiling = [i for i, (e, c) in enumerate(zip(eager, compiled)) if c > 5 * e]  # (seconds against a fraction)
        compile_seconds = sum(compiled[i] - eager[i] for i in compiling)
        rest = [i for i in range(len(eager)) if i not in compiling and i > 0]  # (step 0: both warm up)
        saving = median([eager[i] - compiled[i] for i in rest]) if rest else 0.0
        return {"eager_step_seconds": median([eager[i] for i in rest]),
                "compiled_step_seconds": median([compiled[i] for i in rest]),
                "compilations": len(compiling), "compile_seconds": compile_seconds, "saving_per_step": saving,
                "break_even_steps": compile_seconds / saving if saving > 0 else None,
                "steps": self.p["steps"], "max_seq_length": self.p["compiled_max_seq_length"],
                "default": "off unless a quickstart-sized run (250 steps) breaks even",
                "note": "LoRA, batch 8, inductor on the CPU; both arms pad to a multiple of 64 tokens"}

    # 4b ------------------------------------------------------------------------------------------
    def training_features(self) -> dict:
        """Tokens/s of the default step beside the step without each of its features (the answer-only
        LM head, bf16 autocast, eager attention on the CPU: train.attn_implementation=auto) and
        without LoRA's dropout (a hyperparameter, not a speed setting: what its random masks cost)."""
        from sweep.training.sft import bf16_is_fast

        default = "default (answer-only head, bf16 auto, attention auto)"
        variants = {default: [],
                    "full logits": ["train.answer_only_logits=false"],
                    "fp32 (no autocast)": ["train.bf16=false"],
                    "fused attention (sdpa)": ["train.attn_implementation=sdpa"],
                    "no LoRA dropout": ["lora.dropout=0"]}
        out = {}
        self.training_rate(self.cfg(f"train.max_steps={self.p['steps']}"))  # (untimed: the first run in a
        # process pays oneDNN's kernel generation for every new shape, which the variant measured first would carry)
        for label, overrides in variants.items():
            out[label] = {"tokens_per_second": self.training_rate(self.cfg(f"train.max_steps={self.p['steps']}",
                                                                           *overrides))}
        rate = {label: figures["tokens_per_second"] for label, figures in out.items()}
        out["answer_only_speedup"] = rate[default] / rate["full logits"]
        out["bf16_speedup"] = rate[default] / rate["fp32 (no autocast)"]
        out["attention_auto_speedup"] = rate[default] / rate["fused attention (sdpa)"]
        out["lora_dropout_cost"] = rate["no LoRA dropout"] / rate[default]
        out["bf16_is_fast_here"] = bf16_is_fast()
        return out

    # 6 -------------------------------------------------------------------------------------------
    def trl(self) -> dict:
        import datasets
        from omegaconf import OmegaConf
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        from sweep.data.examples import training_pairs
        from sweep.pipeline.build import build, load_project_tasks
        from sweep.training.models import load_model_and_tokenizer
        from sweep.training.sft import longest_row, training_attention, use_bf16

        cfg = self.cfg(f"train.max_steps={self.p['steps']}", "lora.dropout=0")
        ours = self.training_rate(cfg)
        _, tasks = load_project_tasks(cfg)
        pairs = training_pairs(tasks["sst2"], cfg.data.train_split, cfg.data.max_train_samples, cfg.seed)
        data = datasets.Dataset.from_list([{"prompt": c, "completion": a} for c, a in pairs])
        # TRL 1.x's SFTConfig turns gradient checkpointing on and samples batches at random by default;
        # a user who wants speed turns the first off and groups batches by length, as the harness does,
        # and tries what TRL's docs recommend for speed: padding-free batches, packing (best-fit
        # decreasing, padding-free too), Liger's kernels (Triton: a GPU's only, so not here); tuned, the
        # model is loaded with the attention the harness would train such rows with (eager on the CPU for
        # short padded rows; a flattened or packed row is long: the model's own).
        tuned = {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}
        settings = {"defaults": {}, "tuned": tuned, "tuned_padding_free": tuned | {"padding_free": True},
                    "tuned_packing": {"gradient_checkpointing": False, "packing": True}}
        longest = longest_row(build(cfg).train_dataset, cfg.train)
        rows = {"defaults": None, "tuned": longest, "tuned_padding_free": longest * 8,
                "tuned_packing": PACKED_ROW}  # (the longest row each variant's batches give attention)
        attention = {label: cfg.model.attn_implementation if row is None else
                     training_attention(cfg.train.attn_implementation, row) or cfg.model.attn_implementation
                     for label, row in rows.items()}
        theirs = {label: [] for label in settings}
        for label, extra in settings.items():
            flat = extra.get("padding_free") or extra.get("packing")  # (no padding; pad-id tokens are text there)
            for _ in range(self.p["repeats"]):
                model, tok = load_model_and_tokenizer(OmegaConf.merge(cfg.model, {"attn_implementation": attention[label]}),
                                                      cfg.paths.cache, cfg.seed)
                with tempfile.TemporaryDirectory() as folder:
                    args = SFTConfig(output_dir=folder, max_steps=cfg.train.max_steps, per_device_train_batch_size=8,
                                     learning_rate=cfg.train.lr, bf16=use_bf16(cfg.train.bf16), seed=cfg.seed,
                                     report_to="none", save_strategy="no", logging_steps=1000,
                                     include_num_input_tokens_seen="all" if flat else "non_padding",
                                     use_cpu=not torch.cuda.is_available(),
                                     # (TRL enforces max_length on padding-free rows only by packing them; SST-2's
                                     # examples are far shorter than it anyway)
                                     max_length=None if extra.get("padding_free") else
                                     PACKED_ROW if extra.get("packing") else cfg.train.max_seq_length,
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
        best = max((label for label in settings if label != "defaults"), key=rates.get)
        ratio = ours / rates[best]
        return {"ours_tokens_per_second": ours, "trl_tokens_per_second": rates["defaults"],
                "trl_tuned_tokens_per_second": rates[best], "trl_tuned_best": best,
                "trl_variants_tokens_per_second": rates, "ratio_to_defaults": ours / rates["defaults"],
                "ratio": ratio, "target": ">= 2 against TRL at its fastest here", "met": ratio >= 2,
                "trl_version": trl.__version__, "trl_tuned": settings[best],
                "unavailable": "use_liger_kernel: Liger's kernels are Triton kernels, for GPUs only",
                "note": "same model, LoRA (r, alpha, qkvo), examples, steps, batch 8, seed, bf16 setting; "
                        "TRL trains on prompt-completion pairs with its completion-only loss; defaults: SFTConfig's "
                        "own (gradient checkpointing on, random batches, the model's attention); tuned: as the harness "
                        "trains (no checkpointing, grouped batches, the attention it picks for such rows)",
                "attention": attention}

    # 12 ------------------------------------------------------------------------------------------
    def roofline(self) -> dict:
        """How close to the machine's limit: its own matmul throughput (GEMMs of the model's shapes,
        best of a few runs, fp32 and bf16) beside the harness's training FLOP/s (6 x parameters x
        trained tokens/s, as the MFU metric counts) and a scoring pass's (a no-grad forward pass over
        a batch as lm-eval's are cut, best of three): with every position's logits (2 x parameters a
        token), and with the logits of the last position only, as the harness scores an answer (the
        FLOPs it does: 2 x the parameters below the LM head a token, the head's once a row)."""
        from sweep.pipeline.build import build
        from sweep.training.sft import use_bf16

        cfg = self.cfg(f"train.max_steps={self.p['steps']}")
        built = build(cfg)
        shape, params = built.model.config, sum(p.numel() for p in built.model.parameters())
        head = built.model.get_output_embeddings().weight.numel()
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

        def scoring_rate(**kwargs) -> float:
            best = 0.0
            with torch.no_grad():
                built.model(ids[:2], **kwargs)  # (warm-up)
                for _ in range(3):
                    start = time.perf_counter()
                    built.model(ids, **kwargs)
                    best = max(best, ids.numel() / (time.perf_counter() - start))
            return best

        every, last = scoring_rate(), scoring_rate(logits_to_keep=1)
        last_flops = 2 * (params - head) * last + 2 * head * last / ids.shape[1]
        return {"peak_matmul_flops": peak, "parameters": params,
                "training": {"tokens_per_second": training, "flops": 6 * params * training, "dtype": train_dtype,
                             "fraction_of_peak": 6 * params * training / peak[train_dtype]},
                "scoring": {"tokens_per_second": every, "flops": 2 * params * every, "dtype": "float32",
                            "fraction_of_peak": 2 * params * every / peak["float32"]},
                "scoring_answer_logits": {"tokens_per_second": last, "flops": last_flops, "dtype": "float32",
                                          "fraction_of_peak": last_flops / peak["float32"]},
                "note": "the peak is this machine's own GEMM throughput at the model's shapes, not a datasheet's; "
                        "LoRA computes no gradients of frozen weights, so 6 x parameters overstates its work (4x)"}
