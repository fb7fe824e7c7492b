"""The strongest prompt-only / in-context baseline, chosen without peeking (method=strongest_baseline).

"Did fine-tuning pay off?" is only answered honestly against the best a frozen model can do with
prompting alone, and "best" must not be picked on the examples the answer is reported on (the
maximum of many variants on one split is biased upward). So every variant of `method.search`
(template x k x sampler x calibration) is raced on the development slice (sweep/data/splits.py,
sweep/scoring/race.py), the choice prefers the simpler variant unless a more complex one is better by more
than its uncertainty, and the chosen variant is scored once on the test examples with exactly the
demonstrations it was chosen with, as the equivalent `method=zero_shot|few_shot` run scores it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from omegaconf import DictConfig, ListConfig

from sweep.config import DEFAULT_TEMPLATE, ConfigError, group_options, is_int, is_number, require
from sweep.data import splits
from sweep.scoring import race
from sweep.scoring.checks import FEWSHOT_SAMPLERS, RETRIEVED
from sweep.scoring.leakage import doc_text
from sweep.scoring.registry import set_instruction

log = logging.getLogger(__name__)

MOST_INSTRUCTIONS = 16  # method.search.instructions: each one multiplies the race
ORACLES = ("none", "finished", "all")  # method.search.oracle: which variants are also scored on test (peeking)


def template_suffix(template: str) -> str:
    """'-plain' in a run name; nothing for the default template."""
    return "" if template == DEFAULT_TEMPLATE else f"-{template}"


@dataclass(frozen=True)
class Variant:
    template: str
    num_fewshot: int
    fewshot_sampler: str
    calibrate: bool
    instruction: str | None = None  # a searched instruction in place of the template's (None: the template's)

    @property
    def method(self) -> str:
        return "few_shot" if self.num_fewshot else "zero_shot"

    def label(self) -> str:
        """e.g. few_shot-k4-balanced-cal-plain (the run name of the equivalent baseline run)."""
        parts = [self.method] + ([f"k{self.num_fewshot}"] if self.num_fewshot else [])
        parts += [self.fewshot_sampler] if self.num_fewshot and self.fewshot_sampler != "random" else []
        parts += ["cal"] if self.calibrate else []
        parts += [instruction_tag(self.instruction)] if self.instruction else []
        return "-".join(parts) + template_suffix(self.template)

    def overrides(self) -> list[str]:
        """The command-line overrides of the equivalent stand-alone baseline run."""
        return [f"method={self.method}", f"eval.template={self.template}", f"eval.num_fewshot={self.num_fewshot}",
                f"eval.fewshot_sampler={self.fewshot_sampler}", f"eval.calibrate={str(self.calibrate).lower()}",
                *([f'eval.instruction="{self.instruction}"'] if self.instruction else [])]


def instruction_tag(instruction: str) -> str:
    """A searched instruction in a run or variant name: 'instr' and 6 hex digits of its sha256."""
    return "instr" + hashlib.sha256(instruction.encode()).hexdigest()[:6]


def variants(search: DictConfig, instructions: tuple[str, ...] = ()) -> list[Variant]:
    """The distinct variants of the search, simplest first (ties go to the simpler one: a searched
    instruction counts as more complex than the template's own); the sampler does not matter at k=0."""
    out = []
    for template, k, sampler, cal, instruction in itertools.product(
            search.template, sorted(search.num_fewshot), search.fewshot_sampler, sorted(search.calibrate),
            [None, *instructions]):
        v = Variant(template, k, sampler if k else search.fewshot_sampler[0], cal, instruction)
        if v not in out:
            out.append(v)
    return sorted(out, key=lambda v: (v.num_fewshot, v.calibrate, v.instruction is not None,
                                      v.template != DEFAULT_TEMPLATE))


def described(search: DictConfig, instructions: tuple[str, ...] = ()) -> str:
    """The search space a claim against the chosen variant names, e.g. 'the best on development data of
    18 prompting variants (templates default, plain, chat; k 0, 4; demonstrations random, balanced;
    calibration off, on)'."""
    shots = sorted(search.num_fewshot)
    parts = [f"templates {', '.join(search.template)}", f"k {', '.join(map(str, shots))}"]
    parts += [f"demonstrations {', '.join(search.fewshot_sampler)}"] if any(shots) else []
    parts += ["calibration " + ", ".join("on" if c else "off" for c in sorted(search.calibrate))]
    by = f", proposed by {search.proposer}" if search.get("proposer") else ""
    parts += [f"instructions: the template's own and {len(instructions)} searched{by}"] if instructions else []
    return f"the best on development data of {len(variants(search, instructions))} prompting variants " \
           f"({'; '.join(parts)})"


def units(search: DictConfig, instructions: tuple[str, ...] = ()) -> list[list[Variant]]:
    """The variants grouped by scoring pass (template, instruction, k, sampler: calibrated or not,
    one pass gives both), in the order of their simplest variant."""
    groups: dict[tuple, list[Variant]] = {}
    for v in variants(search, instructions):
        groups.setdefault((v.template, v.instruction, v.num_fewshot, v.fewshot_sampler), []).append(v)
    return list(groups.values())


def headline(task) -> str:
    """The metric a variant is judged by: the task's first metric (acc for our classification tasks)."""
    return task.config.metric_list[0]["metric"]


@dataclass
class Choice:
    best: Variant
    panel: list[dict]     # one row per variant and task: dev mean, sd over draws, where the race dropped it
    scores: object        # evaluate.Scores of the best variant on the test examples (None: deferred)
    dev_metrics: dict[str, float]  # its development scores: dev/<task>/<metric>
    demonstrations: list  # the draws it was chosen with and reported with (per draw: {task: docs})
    space: str = ""       # what it was chosen among (`described`), for the claim


@dataclass(frozen=True)
class Search:
    """What the strongest-baseline search needs besides the model: `method.search`, the prompting
    at k demonstrations as the run's eval settings give it (`prompting_of(k)`: draws, content-free
    inputs, seed) and the roles of the examples."""
    space: DictConfig
    prompting_of: Callable[[int], object]  # k -> evaluate.Prompting
    dev_size: int
    limit: int | None
    log_samples: bool
    pool: splits.Pool = splits.WHOLE_SPLIT  # which labelled examples demonstrations come from
    proposer: Callable[[], tuple] | None = None  # () -> (model, tokenizer) proposing instructions (None: the lm's)

    def unit_prompting(self, unit: list[Variant]):
        """The prompting of one scoring pass: fixed draws, calibrated when any of its variants is."""
        v = unit[0]
        retrieved = bool(v.num_fewshot) and v.fewshot_sampler == RETRIEVED  # (per scored example: one draw)
        prompting = replace(self.prompting_of(v.num_fewshot), per_example=retrieved,
                            calibrate=any(u.calibrate for u in unit))
        prompting = replace(prompting, draws=1) if retrieved else prompting
        return replace(prompting, sampler=v.fewshot_sampler) if v.num_fewshot else prompting


class Templates:
    """Each searched template's tasks (with a searched instruction: tasks of their own, whose
    instruction it is), loaded once, with the development slices and the pool of demonstrations
    (the slices are carved once: every template sees the same examples)."""

    def __init__(self, load_tasks, dev_size: int, pool: splits.Pool = splits.WHOLE_SPLIT):
        self.load_tasks, self.dev_size, self.pool, self.slices, self.loaded = load_tasks, dev_size, pool, None, {}

    def __call__(self, template: str, instruction: str | None = None):
        if (template, instruction) not in self.loaded:
            tm, tasks = self.load_tasks(template)
            if instruction:
                set_instruction(tasks, instruction)
            if self.slices is None:
                self.slices = splits.dev_slices(tasks, self.dev_size)
                missing = [n for n in tasks if not self.slices.get(n)]
                if missing:
                    raise ConfigError(f"method=strongest_baseline chooses on a development slice, and task "
                                      f"{missing[0]} has none (data.dev_size={self.dev_size}); set data.dev_size > 0, "
                                      f"or score that task with method=zero_shot|few_shot")
            pools = {n: splits.demonstration_pool(t, self.slices[n], self.pool) for n, t in tasks.items()}
            self.loaded[(template, instruction)] = tm, tasks, pools
        return self.loaded[(template, instruction)]


def reported_prompting(search: Search, best: Variant):
    """How the chosen variant is scored on the test examples: its race pass's prompting (the pass of
    its unit: the same draws of demonstrations), calibrated as the variant is."""
    return search.unit_prompting([best])


def strongest(search: Search, lm, load_tasks, score_test: bool = True) -> Choice:
    """Race the variants on the development slice, choose one accounting for noise (sweep/scoring/race.py),
    then score it once on the test examples with the very demonstrations it was chosen with (unless
    `score_test` is false: a deferred test pass, Choice.scores None).
    `load_tasks(template)` -> (task manager, {task name: task}) of the eval tasks."""
    from sweep.scoring.evaluate import draw_demonstrations, score

    templates = Templates(load_tasks, search.dev_size, search.pool)
    draws: dict[tuple, list] = {}

    def demonstrations(unit: list[Variant]) -> list:
        """A pass's draws, made once: every prefix of the race and the test pass show the same."""
        if tuple(unit) not in draws:
            _, tasks, pools = templates(unit[0].template, unit[0].instruction)
            draws[tuple(unit)] = draw_demonstrations(tasks, search.unit_prompting(unit), pools)
        return draws[tuple(unit)]

    instructions = searched_instructions(search, lm, templates)
    ordered = units(search.space, instructions)

    def score_prefix(unit, start, stop):
        tm, tasks, pools = templates(unit[0].template, unit[0].instruction)
        chunk = {n: splits.dev_task(t, templates.slices[n][start:stop]) for n, t in tasks.items()}
        scores = score(lm, tm, chunk, search.unit_prompting(unit), None, log_samples=True, pools=pools,
                       demonstrations=demonstrations(unit))
        return {v: per_example(scores.results, chunk, v, calibrated_pass=any(u.calibrate for u in unit))
                for v in unit}

    n_tasks = len(templates(ordered[0][0].template)[1])
    log.info("strongest baseline: racing %d variants on %d development examples per task",
             sum(map(len, ordered)), search.dev_size)
    raced = race.race(ordered, score_prefix, search.dev_size, n_tasks, search.space.p_threshold,
                      search.space.n_startup_steps)
    chosen = race.choose([r for r in raced if r.complete])
    best = chosen.variant
    unit_of = next(u for u in ordered if best in u)
    log.info("strongest baseline on the development slice: %s (%.4f; leader %s)", best.label(), chosen.mean(),
             max((r for r in raced if r.complete), key=race.Raced.mean).variant.label())
    tm, tasks, pools = templates(best.template, best.instruction)
    final = reported_prompting(search, best)
    shown = demonstrations(unit_of)
    panel = panel_rows(raced, tasks, chosen)
    dev = dev_metrics(chosen, tasks)
    if not score_test:
        return Choice(best, panel, None, dev, shown, described(search.space, instructions))
    scores = score(lm, tm, tasks, final, search.limit, search.log_samples, pools=pools, demonstrations=shown)
    # A calibrated pass holds the uncalibrated scores too: then the test pass is the chosen pass's oracle.
    done = {tuple(unit_of): scores} if final == search.unit_prompting(unit_of) else {}
    oracle_scores(panel, peeked(ordered, raced, search.space.oracle), search, lm, templates, demonstrations, done)
    return Choice(best, panel, scores, dev, shown, described(search.space, instructions))


def searched_instructions(search: Search, lm, templates: Templates) -> tuple[str, ...]:
    """method.search.instructions > 0: that many instructions proposed from the pool of the (one) eval
    task's train role (sweep/scoring/instructions.py) by the model under test, or the one
    method.search.proposer names; none otherwise."""
    n = search.space.get("instructions") or 0
    if not n:
        return ()
    from sweep.scoring.instructions import propose

    _, tasks, pools = templates(search.space.template[0])
    [(name, task)] = tasks.items()
    examples = [(doc_text(d), answer_text(task, d)) for d in pools[name]]
    model, tokenizer = search.proposer() if search.proposer else (lm.model, lm.tokenizer)
    found = tuple(propose(model, tokenizer, examples, n, search.prompting_of(0).seed))
    log.info("strongest baseline: %d of %d instructions proposed from task %s's %d training examples "
             "(each a variant in the race): %s", len(found), n, name, len(examples), " | ".join(found))
    return found


def answer_text(task, doc) -> str:
    """A labelled example's answer as text (a multiple-choice task's target is an index into its choices)."""
    target = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.OUTPUT_TYPE == "multiple_choice" else None
    return str(choices[target]) if choices and isinstance(target, int) else str(target)


def per_example(results: dict, tasks: dict, v: Variant, calibrated_pass: bool) -> tuple[list, list]:
    """(by_draw, predictions) of variant `v` from a pass's samples, the tasks one after the other:
    a calibrated pass holds both the calibrated scores and lm-eval's own (`_uncalibrated`)."""
    suffix = "_uncalibrated" if calibrated_pass and not v.calibrate else ""
    by_draw, predictions = [], []
    for name, task in tasks.items():
        metric = headline(task) + suffix
        samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        scores = [s.get(f"{metric}_by_draw", [s[metric]]) for s in samples]
        preds = [s.get(f"prediction{suffix}_by_draw", [s.get(f"prediction{suffix}")]) for s in samples]
        by_draw = [a + list(b) for a, b in zip(by_draw, zip(*scores))] if by_draw else [list(d) for d in zip(*scores)]
        predictions = [a + list(b) for a, b in zip(predictions, zip(*preds))] if predictions \
            else [list(p) for p in zip(*preds)]
    return by_draw, predictions


def dev_metrics(chosen: race.Raced, tasks: dict) -> dict[str, float]:
    """The chosen variant's development score per task (dev/<task>/<metric>) and its spread over draws."""
    out = {}
    for t, (name, task) in enumerate(tasks.items()):
        part, key = chosen.task(t), splits.dev_name(name) + "/" + headline(task)
        out[key] = part.mean()
        if len(part.by_draw) > 1:
            out[f"{key}_draw_sd"] = part.draw_sd()
    return out


def panel_rows(raced: list[race.Raced], tasks: dict, chosen: race.Raced) -> list[dict]:
    """One row per variant and task: its development mean (on the examples it was scored on before
    the race dropped it, if it did), spread over draws, top-answer share, and whether it was chosen."""
    rows = []
    for r in raced:
        v = r.variant
        for t, (name, task) in enumerate(tasks.items()):
            part = r.task(t)
            rows.append({"variant": v.label(), "template": v.template, "instruction": v.instruction,
                         "num_fewshot": v.num_fewshot,
                         "fewshot_sampler": v.fewshot_sampler if v.num_fewshot else "-", "calibrate": v.calibrate,
                         "task": name, "metric": headline(task), "dev_mean": part.mean(), "dev_n": part.n,
                         "dev_draw_sd": part.draw_sd() if len(part.by_draw) > 1 else None,
                         "top_prediction_share": part.top_share(), "pruned_at": r.pruned_at,
                         "chosen": r is chosen})
    return rows


def peeked(ordered: list[list[Variant]], raced: list[race.Raced], oracle: str) -> list[list[Variant]]:
    """The passes `method.search.oracle` scores on the test examples: all, those with a variant that
    finished the race, or none."""
    finished = {r.variant for r in raced if r.complete}
    return [u for u in ordered if oracle == "all" or (oracle == "finished" and finished & set(u))]


def oracle_scores(panel: list[dict], peeked: list[list[Variant]], search: Search, lm, templates,
                  demonstrations, done: dict) -> None:
    """method.search.oracle: the variants of `peeked` also scored on the test examples (their draws
    as on the development slice), into the panel as `test_mean`. Peeking, for the report's comparison
    with the honest choice; nothing reads it to choose. `done`: passes already scored on test."""
    from sweep.scoring.evaluate import score

    rows = {(row["variant"], row["task"]): row for row in panel}
    for unit in peeked:
        tm, unit_tasks, pools = templates(unit[0].template, unit[0].instruction)
        calibrated = any(v.calibrate for v in unit)
        scores = done.get(tuple(unit)) or score(lm, tm, unit_tasks, search.unit_prompting(unit), search.limit,
                                                 log_samples=False, pools=pools, demonstrations=demonstrations(unit))
        for v in unit:
            suffix = "_uncalibrated" if calibrated and not v.calibrate else ""
            for name, task in unit_tasks.items():
                rows[(v.label(), name)]["test_mean"] = scores.metrics[f"{name}/{headline(task)}{suffix}"]
        log.info("strongest baseline (oracle, peeking): %s", ", ".join(
            f"{v.label()} {rows[(v.label(), n)]['test_mean']:.4f}" for v in unit for n in unit_tasks))


def check_search(search: DictConfig, tm, tasks: list[str]) -> None:
    """Every searched template exists for every eval task (before any compute)."""
    from sweep.scoring.registry import check_templates

    for template in search.template:
        check_templates(tm, list(tasks), template, key="method.search.template")
    if search.get("instructions") and len(tasks) != 1:
        raise ConfigError(f"method.search.instructions={search.instructions} searches one task's instruction, and "
                          f"eval.tasks has {len(tasks)}; score one task, or set method.search.instructions=0")


def validate_baseline_search(search: DictConfig) -> None:
    """method=strongest_baseline: the variants tried on the development slice."""
    def non_empty_list(key, ok, rule):
        values = search[key]
        require(isinstance(values, (list, ListConfig)) and len(values) > 0 and all(ok(v) for v in values),
                f"method.search.{key}", values, rule)

    non_empty_list("template", lambda v: isinstance(v, str) and v.strip(), "must be a non-empty list of templates")
    non_empty_list("num_fewshot", lambda v: is_int(v) and v >= 0, "must be a non-empty list of integers >= 0")
    non_empty_list("fewshot_sampler", lambda v: v in FEWSHOT_SAMPLERS,
                   f"must be a non-empty list of {', '.join(FEWSHOT_SAMPLERS)}")
    non_empty_list("calibrate", lambda v: isinstance(v, bool), "must be a non-empty list of true/false")
    instructions = search.get("instructions", 0)
    require(is_int(instructions) and 0 <= instructions <= MOST_INSTRUCTIONS, "method.search.instructions",
            instructions, f"must be an integer in [0, {MOST_INSTRUCTIONS}]: the instructions proposed and raced "
            "(each multiplies the race; 0: the templates' own)")
    require(is_number(search.p_threshold) and 0 <= search.p_threshold <= 1, "method.search.p_threshold",
            search.p_threshold, "must be a p-value in [0, 1] (0: the race drops nothing)")
    require(is_int(search.n_startup_steps) and search.n_startup_steps > 1, "method.search.n_startup_steps",
            search.n_startup_steps, "must be an integer > 1 (development examples before a variant can be dropped)")
    require(search.oracle in ORACLES, "method.search.oracle", search.oracle, f"choose one of {', '.join(ORACLES)}")
    proposer, models = search.get("proposer"), group_options("model")
    require(proposer is None or proposer in models, "method.search.proposer", proposer,
            f"must be null (the model under test proposes) or a model config: {', '.join(models)}")
