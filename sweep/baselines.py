"""The strongest prompt-only / in-context baseline, chosen without peeking (method=strongest_baseline).

"Did fine-tuning pay off?" is only answered honestly against the best a frozen model can do with
prompting alone, and "best" must not be picked on the examples the answer is reported on (the
maximum of many variants on one split is biased upward). So every variant of `method.search`
(template x k x sampler x calibration) is scored on a development slice: a seeded sample of the
train split, without any example whose prompt text also occurs in the reported split, and never
used as a demonstration. The variant with the best mean over its draws is then scored once on the
reported split, exactly as the equivalent `method=zero_shot|few_shot` run would score it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
import statistics
from dataclasses import dataclass, replace

from omegaconf import DictConfig

from sweep.config import DEFAULT_TEMPLATE, ConfigError

log = logging.getLogger(__name__)


def template_suffix(template: str) -> str:
    """'-plain' in a run name; nothing for the default template."""
    return "" if template == DEFAULT_TEMPLATE else f"-{template}"


@dataclass(frozen=True)
class Variant:
    template: str
    num_fewshot: int
    fewshot_sampler: str
    calibrate: bool

    @property
    def method(self) -> str:
        return "few_shot" if self.num_fewshot else "zero_shot"

    def label(self) -> str:
        """e.g. few_shot-k4-balanced-cal-plain (the run name of the equivalent baseline run)."""
        parts = [self.method] + ([f"k{self.num_fewshot}"] if self.num_fewshot else [])
        parts += ["balanced"] if self.num_fewshot and self.fewshot_sampler == "balanced" else []
        parts += ["cal"] if self.calibrate else []
        return "-".join(parts) + template_suffix(self.template)

    def overrides(self) -> list[str]:
        """The command-line overrides of the equivalent stand-alone baseline run."""
        return [f"method={self.method}", f"eval.template={self.template}", f"eval.num_fewshot={self.num_fewshot}",
                f"eval.fewshot_sampler={self.fewshot_sampler}", f"eval.calibrate={str(self.calibrate).lower()}"]


def variants(search: DictConfig) -> list[Variant]:
    """The distinct variants of the search, simplest first (ties go to the simpler one); the
    sampler does not matter at k=0."""
    out = []
    for template, k, sampler, cal in itertools.product(search.template, sorted(search.num_fewshot),
                                                         search.fewshot_sampler, sorted(search.calibrate)):
        v = Variant(template, k, sampler if k else search.fewshot_sampler[0], cal)
        if v not in out:
            out.append(v)
    return sorted(out, key=lambda v: (v.num_fewshot, v.calibrate, v.template != DEFAULT_TEMPLATE))


def text_of(task, doc) -> str:
    return str(task.doc_to_text(doc))


def dev_indices(task, size: int, seed: int) -> list[int]:
    """`size` seeded indices into the task's train split whose prompt text does not occur in the
    reported split (SST-2's train split repeats some of its validation sentences)."""
    split = task.config.training_split
    if not split or split in (task.config.validation_split, task.config.test_split):
        raise ConfigError(f"method=strongest_baseline: task {task.config.task} has no train split apart from the "
                          f"split it reports on, so there is nowhere to carve a development slice from")
    train, reported = task.dataset[split], {text_of(task, d) for d in task.eval_docs}
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    picked = []
    for i in order:
        if text_of(task, train[i]) not in reported:
            picked.append(i)
            if len(picked) == size:
                return sorted(picked)
    raise ConfigError(f"method.search.dev_size={size} is larger than task {task.config.task}'s train split can give "
                      f"({len(picked)} examples not in the reported split); lower it")


def dev_task(task, indices: list[int]):
    """A shallow copy of `task` that reports on the development slice (split `dev`)."""
    import datasets

    dev = copy.copy(task)
    dev._config = copy.copy(task.config)
    dev._config.validation_split, dev._config.test_split = "dev", None
    dev.dataset = datasets.DatasetDict({**task.dataset, "dev": task.dataset[task.config.training_split].select(indices)})
    return dev


def demonstration_pool(task, indices: list[int]) -> list[dict]:
    """The few-shot pool without the development slice."""
    docs = list(task.fewshot_docs())
    if (task.config.fewshot_split or task.config.training_split) != task.config.training_split:
        return docs
    dev = set(indices)
    return [d for i, d in enumerate(docs) if i not in dev]


def headline(task) -> str:
    """The metric a variant is judged by: the task's first metric (acc for our classification tasks)."""
    return task.config.metric_list[0]["metric"]


@dataclass
class Choice:
    best: Variant
    panel: list[dict]     # one row per variant and task: dev mean, sd over draws
    scores: object        # evaluate.Scores of the best variant on the reported split


def strongest(cfg: DictConfig, lm, load_tasks) -> Choice:
    """Search the variants on the development slice, then score the best on the reported split.
    `load_tasks(template)` -> (task manager, {task name: task}) of the eval tasks."""
    from sweep.evaluate import Prompting, score

    search = cfg.method.search
    indices, panel = {}, []
    means: dict[Variant, float] = {}
    for template in dict.fromkeys(search.template):
        tm, tasks = load_tasks(template)
        for name, task in tasks.items():
            indices.setdefault(name, dev_indices(task, search.dev_size, cfg.seed))
        devs = {n: dev_task(t, indices[n]) for n, t in tasks.items()}
        pools = {n: demonstration_pool(t, indices[n]) for n, t in tasks.items()}
        passes: dict[tuple, list[Variant]] = {}  # calibrated or not: one scoring pass gives both
        for v in variants(search):
            if v.template == template:
                passes.setdefault((v.num_fewshot, v.fewshot_sampler), []).append(v)
        for (k, sampler), group in passes.items():
            prompting = replace(Prompting.from_config(cfg, k), sampler=sampler, per_example=False,
                                calibrate=any(v.calibrate for v in group))
            log.info("strongest baseline: scoring %s on %d development examples",
                     ", ".join(v.label() for v in group), search.dev_size)
            scores = score(lm, tm, devs, prompting, limit=None, log_samples=False, pools=pools)
            for v in group:
                rows = [dev_row(v, name, headline(devs[name]), scores, prompting.calibrate) for name in devs]
                panel += rows
                means[v] = statistics.fmean(r["dev_mean"] for r in rows)
    ordered = variants(search)  # simplest first: a tie goes to the simpler variant
    best = max(ordered, key=means.__getitem__)
    position = {v.label(): i for i, v in enumerate(ordered)}
    panel.sort(key=lambda row: position[row["variant"]])
    log.info("strongest baseline on the development slice: %s (%.4f)", best.label(), means[best])
    tm, tasks = load_tasks(best.template)
    final = replace(Prompting.from_config(cfg, best.num_fewshot), sampler=best.fewshot_sampler, per_example=False,
                    calibrate=best.calibrate)
    scores = score(lm, tm, tasks, final, cfg.eval.limit, cfg.eval.log_samples)
    for row in panel:
        row["chosen"] = row["variant"] == best.label()
    return Choice(best, panel, scores)


def dev_row(v: Variant, task: str, metric: str, scores, calibrated_pass: bool) -> dict:
    """The variant's dev score: a calibrated pass holds both the calibrated `acc` and lm-eval's own
    `acc_uncalibrated`."""
    suffix = "_uncalibrated" if calibrated_pass and not v.calibrate else ""
    m = scores.metrics
    return {"variant": v.label(), "template": v.template, "num_fewshot": v.num_fewshot,
            "fewshot_sampler": v.fewshot_sampler if v.num_fewshot else "-", "calibrate": v.calibrate,
            "task": task, "metric": metric, "dev_mean": m[f"{task}/{metric}{suffix}"],
            "dev_draw_sd": m.get(f"{task}/{metric}{suffix}_draw_sd"),
            "top_prediction_share": m.get(f"{task}/top_prediction_share{suffix}")}


def check_search(cfg: DictConfig, tm) -> None:
    """Every searched template exists for every eval task (before any compute)."""
    from sweep.evaluate import check_templates

    for template in cfg.method.search.template:
        check_templates(tm, list(cfg.eval.tasks), template, key="method.search.template")
