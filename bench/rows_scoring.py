"""Benchmark rows of scoring: in-process scoring, the baseline panel, the strongest baseline's race,
judged KL, generation."""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from bench.common import BenchBase, median


class ScoringRows(BenchBase):
    # 3 -------------------------------------------------------------------------------------------
    def scoring(self) -> dict:
        from peft import PeftModel

        from sweep.pipeline.build import build, load_project_tasks
        from sweep.scoring import prefix_cache
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

        def every_position(scoring):
            def run():
                keeps = prefix_cache.keeps_logits
                prefix_cache.keeps_logits = lambda model: False  # (the scorer's fallback: every position's logits)
                try:
                    scoring()
                finally:
                    prefix_cache.keeps_logits = keeps
            return run

        reps = range(self.p["repeats"])
        zero = median([timed(in_process(0)) for _ in reps])
        reload = median([timed(reload_then_score) for _ in reps])
        kshot = median([timed(in_process(k)) for _ in reps])
        kshot_stock = median([timed(in_process(k, stock)) for _ in reps])
        kshot_every_position = median([timed(every_position(in_process(k))) for _ in reps])
        return {"in_process_seconds": zero, "save_reload_seconds": reload, "ratio": reload / zero,
                "zero_shot_seconds_per_example": zero / limit, f"{k}_shot_seconds_per_example": kshot / limit,
                "k_shot_vs_zero_shot": kshot / zero, "k_shot_lm_eval_hflm_vs_zero_shot": kshot_stock / zero,
                "k_shot_every_position_seconds": kshot_every_position,
                "answer_positions_speedup": kshot_every_position / kshot,
                "target": "k-shot at most 1.5x zero-shot per example", "examples": limit,
                "note": "answer_positions_speedup: the prefix-cached k-shot pass with the LM head at every position "
                        "(as before, and as lm-eval) over the same pass with it at the answer positions only"}

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
        from sweep.pipeline.plan import plan_of
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
            search = Search(cfg.method.search, plan_of(cfg).prompting_at, dev,
                            self.p["eval_limit"], False)
            start = time.perf_counter()
            choice = strongest(search, lm, lambda template, cfg=cfg: eval_tasks(cfg, template))
            dropped = [r["variant"] for r in choice.panel if r["pruned_at"]]
            out[label] = {"dev_examples": dev, "seconds": time.perf_counter() - start, "chosen": choice.best.label(),
                          "dev_score": choice.dev_metrics["dev/sst2/acc"], "test_score": choice.scores.metrics["sst2/acc"],
                          "variants_dropped": len(dropped)}
        return out | {"race_vs_full_time": out["race"]["seconds"] / out["full_search"]["seconds"],
                      "target": "the race on twice the development examples takes no longer (ratio <= 1)"}

    # 10 ------------------------------------------------------------------------------------------
    def judged_kl(self) -> dict:
        from sweep.pipeline.build import build
        from sweep.runtime import memory
        from sweep.stages.judging import sequence_logprobs

        cfg = self.cfg("experiment=instruction_data", "method=lora", f"eval.limit={self.p['generation_limit']}",
                       f"eval.batch_size={self.p['kl_batch_size']}")
        built = build(cfg)
        contexts, replies = [], []
        for task in built.eval_tasks.values():
            for doc in list(task.eval_docs)[:self.p["generation_limit"]]:
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
        from sweep.scoring.evaluate import Prompting, make_lm, score
        from sweep.stages.judging import replies

        cfg = self.cfg("experiment=instruction_data", "method=zero_shot", f"eval.limit={self.p['generation_limit']}")
        built = build(cfg)
        out, texts = {"examples_per_task": self.p["generation_limit"], "batch_size": cfg.eval.batch_size}, {}
        for label, batched in (("lm_eval_hflm", False), ("length_batched", True)):
            lm = make_lm(built.model, built.tokenizer, cfg.eval.batch_size, prefix_cache=batched, length_batched=batched)
            seconds = []
            for _ in range(self.p["repeats"]):
                tm, tasks = load_project_tasks(cfg)  # (fresh task objects, loaded outside the timing)
                tasks = {name: tasks[name] for name in built.eval_tasks}
                start = time.perf_counter()
                results = score(lm, tm, tasks, Prompting(seed=cfg.seed), self.p["generation_limit"], True).results
                seconds.append(time.perf_counter() - start)
            texts[label] = {name: {i: r for i, (_, _, r) in replies(results, name).items()} for name in tasks}
            out[f"{label}_seconds"] = median(seconds)
        out["replies_equal"] = texts["lm_eval_hflm"] == texts["length_batched"]
        out["speedup"] = out["lm_eval_hflm_seconds"] / out["length_batched_seconds"]
        out["target"] = "at least 2x, the same replies"
        return out


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
