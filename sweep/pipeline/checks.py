"""The checks of a composed config that run before any compute. Each group's owner checks its own
keys (training, data, scoring, the baseline search, the stages); this module resolves the config,
runs them in order and holds the rules that span groups.

Every error names the key, the bad value and what would be accepted, so a typo in a sweep costs a
second, not a model load.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweep.config import ConfigError, is_int, require
from sweep.data.checks import validate_data
from sweep.runtime.files import check_writable
from sweep.scoring.baselines import validate_baseline_search
from sweep.scoring.checks import validate_eval
from sweep.stages.table import FIRST_STAGE, STAGES, validate_stage
from sweep.tracking.checks import validate_tracking
from sweep.training.checks import (
    METHODS,
    PROMPT_LEARNING,
    validate_lora,
    validate_method,
    validate_model,
    validate_prompt,
    validate_train,
)


def validate(cfg: DictConfig) -> None:
    """Check the composed config; raise ConfigError on the first problem."""
    try:  # (Hydra's own node, when present, holds values that are only set while a job runs)
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except Exception as e:  # a bad interpolation, e.g. ${mul:...} on a string
        raise ConfigError(f"the config does not resolve: {e}") from None

    require(is_int(cfg.seed) and 0 <= cfg.seed < 2**32, "seed", cfg.seed,
            "must be an integer >= 0 and below 2^32 (what numpy and torch take)")
    validate_paths(cfg.paths)
    step = cfg.debug.fail_at_step
    require(step is None or (is_int(step) and step > 0), "debug.fail_at_step", step,
            "must be a training step (an integer > 0) or null")
    validate_tracking(cfg.tracking)
    validate_model(cfg.model)
    m = cfg.method
    validate_method(m)
    if m.trains:
        validate_train(cfg.train)
    validate_data(cfg.data, m.trains)
    if m.trains:
        require(not cfg.train.num_train_epochs or STAGES[cfg.stage.name].data != "prompts", "train.num_train_epochs",
                cfg.train.num_train_epochs, f"stage={cfg.stage.name} generates from prompts each step: count its "
                "steps with train.max_steps and set train.num_train_epochs=null")
        require(not cfg.eval.every_steps or cfg.data.dev_size, "eval.every_steps", cfg.eval.every_steps,
                "scores the development slice during training, and data.dev_size=0 carves none: "
                "set data.dev_size (e.g. 200) or eval.every_steps=null")
    validate_lora(cfg.lora)  # (a bad value is refused even where the method does not read it)
    if m.peft == "lora":
        require(m.quantization is None or cfg.lora.init not in ("pissa", "olora"), "lora.init", cfg.lora.init,
                "pissa and olora rewrite the base weights, which a 4-bit base model cannot hold; "
                "use method=lora, or lora.init=default|gaussian")
    if m.peft in PROMPT_LEARNING:
        validate_prompt(cfg.prompt)
        require(not (m.trains and cfg.train.padding_free), "train.padding_free", cfg.train.padding_free,
                f"method={m.name} prepends virtual tokens to each example, which a flattened batch has only once: "
                "set train.padding_free=false")
    validate_eval(cfg.eval, m.trains)
    tasks = list(cfg.eval.tasks) if OmegaConf.is_list(cfg.eval.tasks) else []
    require(len(set(map(str, tasks))) == len(tasks), "eval.tasks", tasks, "names a task twice: name each once")
    if METHODS[m.name].searches_prompts:
        validate_baseline_search(m.search)
        require(cfg.data.dev_size > 0, "data.dev_size", cfg.data.dev_size,
                "method=strongest_baseline chooses on the development slice: set data.dev_size > 0, e.g. 200")
    validate_stage(cfg.stage, m, cfg.lora, cfg.init.run_id, cfg.train)
    if cfg.eval.sequential:
        validate_deferred(cfg)


def validate_deferred(cfg: DictConfig) -> None:
    """eval.sequential=true defers the test pass to settle.py, which rebuilds the chosen runs from the
    store (sweep/pipeline/deferred.py): it needs a development score to choose by, and an adapter it
    can load, of the first stage (a later stage's replies are judged, which settle.py does not do)."""
    require(cfg.data.dev_size > 0, "data.dev_size", cfg.data.dev_size,
            "eval.sequential=true scores the test examples of the runs chosen on the development slice: "
            "set data.dev_size > 0, e.g. 200")
    require(cfg.stage.name == FIRST_STAGE, "eval.sequential", True,
            f"stage={cfg.stage.name}: settle.py scores the first stage's runs (stage={FIRST_STAGE}); "
            "set eval.sequential=false")
    require(cfg.eval.judge_run_id is None, "eval.judge_run_id", cfg.eval.judge_run_id,
            "eval.sequential=true: settle.py scores test examples by their labels, it does not judge replies; "
            "set eval.judge_run_id=null or eval.sequential=false")
    if cfg.method.trains:
        require(cfg.method.peft == "lora" and cfg.tracking.log_adapter, "eval.sequential", True,
                f"method={cfg.method.name}{'' if cfg.tracking.log_adapter else ' with tracking.log_adapter=false'}: "
                "settle.py scores the test examples with the LoRA adapter the run stores; "
                "use a LoRA method with tracking.log_adapter=true, or eval.sequential=false")


def validate_paths(paths: DictConfig) -> None:
    """Folders a job writes must be creatable there; the task folder must hold task YAMLs (a wrong
    one would let lm-eval fall back to its own built-in task of the same name, another data source)."""
    for key in ("cache", "pending", "generated"):
        check_writable(f"paths.{key}", paths[key])
    tasks = Path(str(paths.tasks))
    require(tasks.is_dir() and any(tasks.glob("*.yaml")), "paths.tasks", str(paths.tasks),
            "must be a folder of lm-eval task YAMLs (the project's: tasks/)")
