"""The eval group's own checks: tasks, limits, prompting and generation settings."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from sweep.config import DEFAULT_TEMPLATE, is_int, is_number, require, run_id_or_null

RETRIEVED = "retrieved"  # demonstrations chosen per scored example by similarity (sweep/scoring/fewshot.py)
FEWSHOT_SAMPLERS = ("random", "balanced", RETRIEVED)
RETRIEVERS = ("tfidf", "hidden")  # eval.retriever: TF-IDF cosine, or the model's own mean-pooled hidden states
FEWSHOT_POOLS = ("split", "trained")  # eval.fewshot_pool (sweep/data/splits.py: Pool)


def validate_eval(e: DictConfig, trains: bool) -> None:
    """The eval group; `trains`: whether the method trains (else scoring is all there is to do)."""
    require(isinstance(e.enabled, bool) and (e.enabled or trains), "eval.enabled", e.enabled,
            "must be true or false, and true for a method that does not train (there would be nothing to do)")
    require(isinstance(e.tasks, (list, ListConfig)) and len(e.tasks) > 0 and all(isinstance(x, str) for x in e.tasks),
            "eval.tasks", e.tasks, "must be a non-empty list of lm-eval task names, e.g. eval.tasks=[sst2]")
    require(is_int(e.num_fewshot) and e.num_fewshot >= 0, "eval.num_fewshot", e.num_fewshot,
            "must be an integer >= 0")
    require(e.limit is None or (is_int(e.limit) and e.limit > 0), "eval.limit", e.limit,
            "must be a positive integer or null (score every example)")
    require(is_number(e.margin) and 0 <= e.margin < 1, "eval.margin", e.margin,
            "must be a number in [0, 1), the smallest difference that matters, e.g. eval.margin=0.01")
    require(isinstance(e.sequential, bool), "eval.sequential", e.sequential, "must be true or false")
    require(e.instruction is None or (isinstance(e.instruction, str) and e.instruction.strip() and not trains),
            "eval.instruction", e.instruction, "must be null or a non-empty instruction, for a method that does not "
            "train (an adapter is scored with the prompt it trained on)")
    require(is_int(e.sequential_block) and e.sequential_block >= 1, "eval.sequential_block", e.sequential_block,
            "must be a whole number of test examples >= 1, e.g. eval.sequential_block=50")
    require(e.pairs is None or (is_int(e.pairs) and e.pairs > 0), "eval.pairs", e.pairs,
            "must be a positive integer or null (every validation pair)")
    require(is_int(e.batch_size) and e.batch_size > 0, "eval.batch_size", e.batch_size, "must be a positive integer")
    require(e.every_steps is None or (is_int(e.every_steps) and e.every_steps > 0), "eval.every_steps",
            e.every_steps, "must be a positive integer or null (no scoring during training)")
    require(isinstance(e.cache, bool), "eval.cache", e.cache, "must be true or false")
    require(is_int(e.slice_size) and e.slice_size > 0, "eval.slice_size", e.slice_size, "must be a positive integer")
    validate_prompting(e)
    run_id_or_null("eval.judge_run_id", e.judge_run_id)
    validate_generation_kwargs(e.generation)
    for p in e.include_paths:
        require(Path(p).is_dir(), "eval.include_paths", p, "each entry must be an existing folder of task YAMLs")


def validate_generation_kwargs(g: DictConfig) -> None:
    """eval.generation: overrides of the generation tasks' own settings (null keeps the task's)."""
    require(g.max_gen_toks is None or (is_int(g.max_gen_toks) and g.max_gen_toks > 0), "eval.generation.max_gen_toks",
            g.max_gen_toks, "must be a positive integer or null (the task's own)")
    require(g.do_sample is None or isinstance(g.do_sample, bool), "eval.generation.do_sample", g.do_sample,
            "must be true, false or null")
    for key, top in (("temperature", math.inf), ("top_p", 1)):
        require(g[key] is None or (is_number(g[key]) and 0 < g[key] <= top), f"eval.generation.{key}", g[key],
                f"must be a number in (0, {top}] or null")


def validate_prompting(e: DictConfig) -> None:
    """Template, demonstrations and calibration keys of the eval group."""
    require(isinstance(e.template, str) and e.template.strip(), "eval.template", e.template,
            f"must name a template, e.g. eval.template={DEFAULT_TEMPLATE}")
    require(e.retriever in RETRIEVERS, "eval.retriever", e.retriever, f"choose one of {', '.join(RETRIEVERS)}")
    require(e.fewshot_sampler in FEWSHOT_SAMPLERS, "eval.fewshot_sampler", e.fewshot_sampler,
            f"choose one of {', '.join(FEWSHOT_SAMPLERS)}")
    require(e.fewshot_pool in FEWSHOT_POOLS, "eval.fewshot_pool", e.fewshot_pool,
            f"choose one of {', '.join(FEWSHOT_POOLS)}")
    require(is_int(e.fewshot_draws) and e.fewshot_draws > 0, "eval.fewshot_draws", e.fewshot_draws,
            "must be a positive integer (independent draws of demonstrations)")
    for key in ("fewshot_per_example", "fewshot_as_multiturn", "calibrate"):
        require(isinstance(e[key], bool), f"eval.{key}", e[key], "must be true or false")
    require(isinstance(e.content_free, (list, ListConfig)) and len(e.content_free) > 0
            and all(isinstance(x, str) for x in e.content_free), "eval.content_free", e.content_free,
            'must be a non-empty list of strings, e.g. ["N/A", "", "[MASK]"]')
    require(not (e.calibrate and e.fewshot_per_example), "eval.calibrate", e.calibrate,
            "calibration estimates the bias of one prompt, so it needs a fixed draw of demonstrations: "
            "set eval.fewshot_per_example=false")
