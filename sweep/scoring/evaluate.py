"""Scoring with lm-eval, in process, on the model that was just trained (no save and reload).

Prompting (which template, how many demonstrations, how they are drawn, calibration) is described
by `Prompting`; `score` runs lm-eval's `simple_evaluate` once per draw of demonstrations with the
project's samplers (sweep/scoring/fewshot.py), applies contextual calibration to lm-eval's logged
log-likelihoods (sweep/scoring/calibration.py) and combines the draws. Metrics are named after the task a
template variant belongs to (`sst2/acc` whichever template scored it), so runs with different
templates line up in one table, and the template is a param.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from sweep.config import DEFAULT_TEMPLATE, ConfigError, close_matches
from sweep.scoring import calibration, fewshot

CURVES = ("train/", "slice/", "draw/")  # per-step and per-draw series; their names hold a "/" too


def is_task_metric(name: str) -> bool:
    """`<task>/<metric>` as the scores of a run are logged (e.g. sst2/acc), not a curve."""
    return "/" in name and not name.startswith(CURVES)


def variant_name(task: str, template: str) -> str:
    """The lm-eval task that renders `task` with `template` (tasks/<task>_<template>.yaml)."""
    return task if template == DEFAULT_TEMPLATE else f"{task}_{template}"


def templates_of(task: str, all_tasks) -> list[str]:
    return [DEFAULT_TEMPLATE] + sorted(t[len(task) + 1:] for t in all_tasks if t.startswith(f"{task}_"))


def task_manager(cfg: DictConfig, task_names: list[str]):
    """lm-eval's TaskManager over tasks/ and eval.include_paths.

    lm-eval's own ~15k task YAMLs take seconds to index, so they are added only when a requested
    task is not found in the project's folders. Project tasks read their JSONL files from
    `paths.data` (passed as task metadata, see tasks/local_data.py).
    """
    from lm_eval.tasks import TaskManager

    paths = [cfg.paths.tasks, *cfg.eval.include_paths]
    meta = {"data_dir": cfg.paths.data}
    tm = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
    if all(t in tm.all_tasks for t in task_names):
        return tm
    # Our sst2/rte YAMLs shadow lm-eval's GLUE ones on purpose: quiet its notice about that.
    logging.getLogger("lm_eval.tasks._index").setLevel(logging.ERROR)
    tm = TaskManager(include_path=paths, include_defaults=True, metadata=meta)
    unknown = [t for t in task_names if t not in tm.all_tasks]
    for folder in paths if unknown else []:
        broken_task_file(Path(folder) / f"{unknown[0]}.yaml")
    if unknown:
        raise ConfigError(
            f"eval.tasks: unknown lm-eval task {unknown[0]!r}{close_matches(unknown[0], tm.all_tasks)}; "
            f"the project's tasks are: {', '.join(sorted(_yaml_task_names(cfg.paths.tasks)))} "
            f"(add folders of your own task YAMLs with eval.include_paths)"
        )
    return tm


def check_templates(tm, task_names: list[str], template: str, key: str = "eval.template") -> dict[str, str]:
    """{task: the lm-eval task of its `template` variant}; ConfigError (naming `key`) when a task has none."""
    variants = {}
    for name in task_names:
        variant = variant_name(name, template)
        if variant not in tm.all_tasks:
            have = templates_of(name, tm.all_tasks)
            raise ConfigError(f"{key}={template!r}: task {name} has no such template (no task "
                              f"{variant}){close_matches(template, have)}; its templates are: {', '.join(have)}")
        variants[name] = variant
    return variants


def broken_task_file(path: Path) -> None:
    """lm-eval skips a task YAML it cannot parse without a word, and the task is then "unknown":
    name the file and the parse error instead."""
    import yaml

    class Loader(yaml.SafeLoader):  # lm-eval's tags (`!function module.name`) as plain text
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: loader.construct_scalar(node))
    if path.is_file():
        try:
            yaml.load(path.read_text(), Loader=Loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"eval.tasks: the task file {path} is not valid YAML ({str(e).splitlines()[0]}); "
                              f"fix it or remove it from eval.include_paths") from None


def _yaml_task_names(folder: str) -> list[str]:
    """The tasks in `folder`, without their template variants (<task>_<template>.yaml)."""
    stems = [p.stem for p in Path(folder).glob("*.yaml")]
    return [s for s in stems if not any(s.startswith(f"{other}_") for other in stems)]


def load_tasks(tm, variants: dict[str, str]) -> dict:
    """Task objects keyed by task name (their datasets are loaded now, so a bad data file fails here)."""
    loaded = tm.load(list(dict.fromkeys(variants.values())))["tasks"]
    return {name: loaded[variant] for name, variant in variants.items()}


def set_generation(tasks: dict, generation: DictConfig) -> None:
    """eval.generation's settings (those not null; lm-eval's names) into each generation task's
    generation_kwargs."""
    settings = {k: v for k, v in generation.items() if v is not None}
    for task in tasks.values():
        if task.OUTPUT_TYPE == "generate_until" and settings:
            task.set_config(key="generation_kwargs", value=settings, update=True)


def uses_chat_template(tasks: dict) -> bool:
    """Whether the tasks' template is a chat one (task metadata `apply_chat_template: true`); every
    task of one scoring pass must agree, since lm-eval applies the chat template to all of them."""
    flags = {name: bool((t.config.metadata or {}).get("apply_chat_template")) for name, t in tasks.items()}
    if len(set(flags.values())) > 1:
        raise ConfigError(f"eval.tasks mix chat and plain-text templates ({flags}); score them in separate runs")
    return any(flags.values())


def check_fewshot_pool(tasks: dict, k: int) -> None:
    for name, task in tasks.items():
        if k == 0:
            continue
        split = task.config.fewshot_split or task.config.training_split
        pool = len(task.dataset[split]) if split else 0
        if k > pool:
            raise ConfigError(
                f"eval.num_fewshot={k} is larger than task {name}'s few-shot pool "
                f"({pool} examples in split {split!r}); use eval.num_fewshot<={pool}"
            )


def make_lm(model, tokenizer, batch_size: int, prefix_cache: bool = True):
    """lm-eval's HFLM around an in-memory model (peft-wrapped or not), with the shared prompt
    prefix of k-shot requests computed once (sweep/scoring/prefix_cache.py; `prefix_cache=False`: lm-eval's
    own HFLM, for the benchmark's side-by-side)."""
    from lm_eval.models.huggingface import HFLM

    from sweep.scoring.prefix_cache import PrefixCachedLM

    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # "pretrained is not a str"
    return (PrefixCachedLM if prefix_cache else HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@dataclass(frozen=True)
class Prompting:
    """How the tasks are prompted besides their template: the demonstrations and calibration."""
    num_fewshot: int = 0
    sampler: str = "random"              # random | balanced (sweep/scoring/fewshot.py)
    draws: int = 1                       # independent draws of demonstrations, each scored
    per_example: bool = False            # lm-eval's sampling: new demonstrations for every example
    calibrate: bool = False              # contextual calibration (sweep/scoring/calibration.py)
    content_free: tuple[str, ...] = calibration.CONTENT_FREE
    fewshot_as_multiturn: bool = True    # chat templates: demonstrations as earlier turns
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: DictConfig, num_fewshot: int | None = None) -> Prompting:
        e = cfg.eval
        k = cfg.method.num_fewshot if num_fewshot is None else num_fewshot
        if not k:  # no demonstrations: how they would be drawn does not matter (nor in the baseline cache's key)
            return cls(calibrate=e.calibrate, content_free=tuple(e.content_free), seed=cfg.seed)
        return cls(num_fewshot=k, sampler=e.fewshot_sampler, draws=e.fewshot_draws, per_example=e.fewshot_per_example,
                   calibrate=e.calibrate, content_free=tuple(e.content_free),
                   fewshot_as_multiturn=e.fewshot_as_multiturn, seed=cfg.seed)

    def check(self, tasks: dict) -> None:
        """ConfigError when a task cannot be prompted this way (before any compute)."""
        check_fewshot_pool(tasks, self.num_fewshot)
        for name, task in tasks.items():
            if task.OUTPUT_TYPE != "multiple_choice" and self.calibrate:
                raise ConfigError(f"eval.calibrate=true: task {name} is not multiple choice "
                                  f"({task.OUTPUT_TYPE}); calibration corrects label probabilities")
            if task.OUTPUT_TYPE != "multiple_choice" and self.sampler == "balanced" and self.num_fewshot:
                raise ConfigError(f"eval.fewshot_sampler=balanced: task {name} has no labels "
                                  f"({task.OUTPUT_TYPE}); use eval.fewshot_sampler=random")


@dataclass
class Scores:
    metrics: dict[str, float]                       # "<task>/<metric>" -> value (stderr as "<metric>_stderr")
    results: dict = field(default_factory=dict)     # lm-eval's output, samples and draws included
    by_draw: list[dict[str, float]] = field(default_factory=list)  # each draw's metrics (several draws)


def draw_demonstrations(tasks: dict, prompting: Prompting, pools: dict[str, list[dict]] | None = None
                        ) -> list[dict[str, list[dict]]]:
    """Each draw's fixed demonstrations per task, drawn from `pools` (default: each task's few-shot
    split); [] without demonstrations or with lm-eval's per-example sampling. Passed to `score`,
    they make a development pass and a test pass prompt with exactly the same demonstrations."""
    if not prompting.num_fewshot or prompting.per_example:
        return []
    pools = demonstration_pools(tasks, pools)
    return [{name: fewshot.draw(prompting.sampler, pools[name], prompting.num_fewshot, task.doc_to_target,
                                fewshot.draw_seed(prompting.seed, d)) for name, task in tasks.items()}
            for d in range(prompting.draws)]


def demonstration_pools(tasks: dict, pools: dict[str, list[dict]] | None) -> dict[str, list[dict]]:
    """`pools`, completed with each other task's few-shot split (read once: it can hold tens of
    thousands of examples)."""
    return {n: (pools or {}).get(n) or list(t.fewshot_docs()) for n, t in tasks.items()}


def score(lm, tm, tasks: dict, prompting: Prompting, limit: int | None, log_samples: bool,
          pools: dict[str, list[dict]] | None = None,
          demonstrations: list[dict[str, list[dict]]] | None = None) -> Scores:
    """Score `tasks` ({task name: lm-eval task}) once per draw and combine the draws.

    `pools`: the demonstrations to draw from per task (default: the task's few-shot split);
    `demonstrations`: each draw's fixed demonstrations (`draw_demonstrations`), drawn here when
    not given."""
    from lm_eval import simple_evaluate

    prompting.check(tasks)
    chat = uses_chat_template(tasks)
    needs_samples = log_samples or prompting.draws > 1 or _multiple_choice(tasks)
    if prompting.num_fewshot:
        pools = demonstration_pools(tasks, pools)
    if demonstrations is None:
        demonstrations = draw_demonstrations(tasks, prompting, pools)
    for task in tasks.values():
        # lm-eval never overrides a task whose config says num_fewshot=0, and its first scoring
        # writes that value into the task object: a task scored zero-shot once would stay zero-shot.
        task.set_config(key="num_fewshot", value=prompting.num_fewshot)
    draws = []
    for d in range(prompting.draws):
        seed = fewshot.draw_seed(prompting.seed, d)
        drawn = set_samplers(tasks, prompting, pools, seed, demonstrations[d] if demonstrations else {})
        results = simple_evaluate(
            model=lm, tasks=list(tasks.values()), task_manager=tm, num_fewshot=prompting.num_fewshot, limit=limit,
            log_samples=needs_samples, bootstrap_iters=1000, random_seed=prompting.seed,
            numpy_random_seed=prompting.seed, torch_random_seed=prompting.seed, fewshot_random_seed=seed,
            apply_chat_template=chat, fewshot_as_multiturn=chat and prompting.fewshot_as_multiturn,
        )
        results = by_task_name(results, tasks)
        for name, task in tasks.items():
            if task.OUTPUT_TYPE == "multiple_choice":
                p_cf = content_free_bias(lm, task, prompting, chat) if prompting.calibrate else None
                record_predictions(results, name, p_cf)
        draws.append({"seed": seed, "demonstrations": drawn, "results": results})
    combined = combine_draws(draws, log_samples)
    by_draw = [flatten_metrics(d["results"]["results"]) for d in draws] if len(draws) > 1 else []
    return Scores(flatten_metrics(combined["results"]), combined, by_draw)


def _multiple_choice(tasks: dict) -> bool:
    return any(t.OUTPUT_TYPE == "multiple_choice" for t in tasks.values())


def set_samplers(tasks: dict, prompting: Prompting, pools: dict, seed: int,
                 fixed: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Give each task the sampler of this draw (`fixed`: its demonstrations per task); return them."""
    if not prompting.num_fewshot:
        return {}
    for name, task in tasks.items():
        if prompting.per_example:
            task.sampler = fewshot.make_sampler(prompting.sampler, pools[name], task.doc_to_target, seed)
        else:
            task.sampler = fewshot.FixedDraw(fixed[name])
    return {} if prompting.per_example else {name: fixed[name] for name in tasks}


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """`metrics` renamed with `prefix` (dev/sst2/acc: a development score)."""
    return {prefix + k: v for k, v in metrics.items()}


def by_task_name(results: dict, tasks: dict) -> dict:
    """lm-eval's output keyed by our task names instead of the template variants' names."""
    rename = {task.config.task: name for name, task in tasks.items()}
    out = dict(results)
    for key in ("results", "samples", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        if isinstance(results.get(key), dict):
            out[key] = {rename.get(k, k): v for k, v in results[key].items()}
    for name, values in out["results"].items():
        out["results"][name] = {**values, "alias": name}
    return out


def content_free_bias(lm, task, prompting: Prompting, chat: bool) -> list[float]:
    """p_cf: label probabilities of the content-free inputs under the same prompt and demonstrations."""
    template = task.eval_docs[0]
    logliks = []
    for text in prompting.content_free:
        doc = calibration.content_free_doc(template, text)
        context = task.fewshot_context(
            doc, prompting.num_fewshot, apply_chat_template=chat,
            fewshot_as_multiturn=chat and prompting.fewshot_as_multiturn,
            chat_template=lm.apply_chat_template if chat else None)
        requests = task.construct_requests(doc, context, metadata=(task.config.task, -1, 1), apply_chat_template=chat)
        logliks.append([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    return calibration.bias(logliks)


def record_predictions(results: dict, name: str, p_cf: list[float] | None) -> None:
    """Per example: the predicted choice (calibrated when `p_cf` is given, then `acc` is the
    calibrated accuracy and `acc_uncalibrated` lm-eval's); per task: the share of the most
    predicted choice (`top_prediction_share`: near 1, the prompt makes the model answer one label)."""
    from lm_eval.api.metrics import mean_stderr

    samples, values = results["samples"][name], results["results"][name]
    for s in samples:
        logliks = [r[0] for r in s["filtered_resps"]]
        s["prediction"] = max(range(len(logliks)), key=logliks.__getitem__)
    values["top_prediction_share,none"] = top_share(samples)
    if p_cf is None:
        return
    for s in samples:
        s["acc_uncalibrated"], s["prediction_uncalibrated"] = s["acc"], s["prediction"]
        s["prediction"] = calibration.calibrated_prediction([r[0] for r in s["filtered_resps"]], p_cf)
        s["acc"] = float(s["prediction"] == s["target"])
    accs = [s["acc"] for s in samples]
    values["acc_uncalibrated,none"], values["acc,none"] = values["acc,none"], statistics.fmean(accs)
    values["acc_stderr,none"] = mean_stderr(accs) if len(accs) > 1 else float("nan")
    values["top_prediction_share_uncalibrated,none"] = values["top_prediction_share,none"]
    values["top_prediction_share,none"] = top_share(samples)
    values["content_free_probs"] = p_cf


def top_share(samples: list[dict]) -> float:
    """The share of the examples given the most frequent prediction."""
    return Counter(s["prediction"] for s in samples).most_common(1)[0][1] / len(samples)


def combine_draws(draws: list[dict], keep_samples: bool) -> dict:
    """One results dict for all draws: each metric the mean over draws, its stderr from the
    per-example means, its spread over draws as `<metric>_draw_sd`; per-example scores averaged
    (so paired tests still pair example by example). The draws stay under `draws`."""
    first = draws[0]["results"]
    combined = dict(first)
    combined["draws"] = [{"seed": d["seed"], "demonstrations": d["demonstrations"],
                          "results": d["results"]["results"]} for d in draws]
    if len(draws) > 1:
        combined["results"] = {name: _combine_task(name, draws) for name in first["results"]}
        combined["samples"] = {name: _combine_samples(name, draws) for name in first.get("samples", {})}
    if not keep_samples:
        combined.pop("samples", None)
    return combined


def _metric_keys(values: dict) -> list[str]:
    return [k for k, v in values.items() if "," in k and "_stderr" not in k and k.split(",")[0] != "sample_len"
            and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _combine_task(name: str, draws: list[dict]) -> dict:
    from lm_eval.api.metrics import mean_stderr

    per_draw = [d["results"]["results"][name] for d in draws]
    samples = _combine_samples(name, draws)
    out = {k: v for k, v in per_draw[0].items() if k not in _metric_keys(per_draw[0])}
    for key in _metric_keys(per_draw[0]):
        metric, _, filt = key.partition(",")
        values = [v[key] for v in per_draw]
        out[key] = statistics.fmean(values)
        out[f"{metric}_draw_sd,{filt}"] = statistics.stdev(values)
        per_example = [s[metric] for s in samples if metric in s]
        if len(per_example) > 1:
            out[f"{metric}_stderr,{filt}"] = mean_stderr(per_example)
    out.pop("content_free_probs", None)
    return out


def _combine_samples(name: str, draws: list[dict]) -> list[dict]:
    runs = [d["results"].get("samples", {}).get(name, []) for d in draws]
    combined = []
    for records in zip(*runs):
        s = dict(records[0])
        for metric in [m for m in records[0].get("metrics", []) if m in records[0]] + ["acc_uncalibrated"]:
            if metric in s:
                s[f"{metric}_by_draw"] = [r[metric] for r in records]
                s[metric] = statistics.fmean(s[f"{metric}_by_draw"])
        for key in ("prediction", "prediction_uncalibrated"):
            if key in s:
                s[f"{key}_by_draw"] = [r[key] for r in records]
        combined.append(s)
    return combined


def flatten_metrics(results: dict) -> dict[str, float]:
    """{'sst2': {'acc,none': .9, 'acc_stderr,none': .01}} -> {'sst2/acc': .9, 'sst2/acc_stderr': .01}."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or metric == "alias":
                continue
            if metric == "sample_len":
                metric = "n_samples"
            name = metric if filt in ("none", "") else f"{metric}_{filt}"
            flat[f"{task}/{name}"] = float(value)
    return flat

