"""A job's evaluate-and-record step: development scores first, then the test scores, each logged
as soon as it exists.

The development pass (`dev/<task>/<metric>`, sweep/data/splits.py) is what every choice reads: an
Optuna trial's value and its pruning, a sweep's best configuration, the strongest baseline. The
test pass runs after it, once, and nothing that chooses reads it; with eval.sequential=true it waits
for the sweep's choice, and settle.py scores the chosen runs' test examples block by block
(sweep/pipeline/deferred.py). Both passes prompt a k-shot
baseline with the same draws of demonstrations, and a judged run's development replies are judged
like its test replies.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from sweep import vocabulary
from sweep.data import splits
from sweep.data.examples import read_generated
from sweep.data.splits import DEV_PREFIX
from sweep.pipeline.build import load_project_tasks
from sweep.pipeline.naming import pool_suffix
from sweep.pipeline.plan import Plan
from sweep.runtime import memory
from sweep.scoring import baselines, leakage
from sweep.scoring.evaluate import Prompting, Scores, draw_demonstrations, score
from sweep.scoring.results import LEAKAGE_PREFIX, is_task_metric, prefixed
from sweep.stages import judging, preference, reference_replies
from sweep.study import trials
from sweep.tracking import records
from sweep.training.models import named_model
from sweep.vocabulary import REWARD_SCORES

log = logging.getLogger(__name__)

REWARD_FIGURE = "reward_distribution.png"


def intermediate_scoring(cfg: DictConfig, plan: Plan, built, trial) -> list:
    """With eval.every_steps, score the first eval.slice_size development examples during training
    (curves `slice/dev/<task>/<metric>`, and the trial's intermediate values for pruning)."""
    if not cfg.eval.every_steps:
        return []
    prompting = plan.prompting

    def score_slice() -> dict[str, float]:
        return prefixed(score(built.lm, built.task_manager, built.dev_tasks, prompting, cfg.eval.slice_size,
                              log_samples=False, pools=built.pools).metrics, DEV_PREFIX)

    return [trials.report_callback(trial, score_slice, cfg.eval.every_steps, cfg.eval.slice_size, records.log_curve)]


def score_reward_model(cfg: DictConfig, built) -> dict[str, float]:
    """A reward model's pairwise accuracy and margin (95% paired-bootstrap CIs) on its development
    pairs (`dev/...`, logged first) and its held-out pairs, its reward distributions of chosen and
    rejected held-out replies (table and plot)."""
    judge = preference.RewardJudge(built.model, built.tokenizer, cfg.train.max_seq_length, cfg.eval.batch_size)
    dev = {}
    if built.dev_pairs:
        dev = prefixed(preference.score_pairs(judge, built.dev_pairs).metrics(cfg.data.task, cfg.seed), DEV_PREFIX)
        records.log_metrics(dev)
    pairs = preference.score_pairs(judge, built.eval_pairs)
    records.log_table(pairs.table(built.eval_pairs), REWARD_SCORES)
    records.log_figure(preference.distribution_figure(pairs, f"{cfg.data.task}: rewards of held-out pairs"),
                        REWARD_FIGURE)
    return dev | pairs.metrics(cfg.data.task, cfg.seed)


def eval_tasks(cfg: DictConfig, template: str):
    """(task manager, {eval task: its `template` variant}), freshly loaded."""
    tm, tasks = load_project_tasks(cfg, template)
    return tm, {name: tasks[name] for name in cfg.eval.tasks}


class ReferenceReplies:
    """The reference policy's replies a judged run compares its own with, on the development and the
    test prompts: generated, or reused from an earlier run with the same key
    (sweep/stages/reference_replies.py); recorded once, when both passes are judged."""

    def __init__(self, cfg: DictConfig, prompting: Prompting, built, key: str | None):
        self.cfg, self.prompting, self.built, self.key = cfg, prompting, built, key
        self.texts: reference_replies.Replies = {}
        self.sources: set[str | None] = set()

    def replies(self, tasks: dict, scores, prefix: str, demonstrations: list) -> dict[str, dict[int, str]]:
        """{task: {doc_id: reply}} for the generation tasks of `tasks` (`prefix`: dev/ for the
        development pass, whose replies are stored under dev/<task>)."""
        if judging.reference_of(self.built.model) is None:
            return {}
        needed = {prefix + n: set(judging.replies(scores.results, n)) for n in judging.generation_tasks(tasks)}
        cached = reference_replies.find(self.key, needed) if self.key and self.cfg.eval.cache else None
        if cached:
            source, stored = cached
            texts = {name: stored[name] for name in needed}
            log.info("reference replies reused from run %s (eval.cache=false generates them again)", source)
        else:
            source = None
            generated = judging.reference_replies(self.built, tasks, self.prompting,
                                                  None if prefix else self.cfg.eval.limit, demonstrations)
            texts = {prefix + n: r for n, r in generated.items()}
        self.texts |= texts
        self.sources.add(source)
        return {name[len(prefix):]: replies for name, replies in texts.items()}

    def record(self) -> None:
        """Into the run: the replies (or, when all were reused from one run, its id) and their key."""
        if self.key and self.sources:
            [source] = self.sources if len(self.sources) == 1 else [None]
            reference_replies.record(self.texts, self.key, source)


def score_pass(cfg: DictConfig, built, tasks: dict, prompting: Prompting, limit: int | None, demonstrations: list,
               references: ReferenceReplies, prefix: str) -> tuple[dict[str, float], object]:
    """(metrics named with `prefix`, lm-eval's scores) of one pass over `tasks`, judged when the run
    has a judge."""
    scores = score(built.lm, built.task_manager, tasks, prompting, limit,
                   cfg.eval.log_samples or built.judge is not None, pools=built.pools, demonstrations=demonstrations)
    metrics = scores.metrics
    if scores.retrieved:  # (each example's demonstrations: the pass can be audited and reproduced)
        records.log_json(scores.retrieved, vocabulary.DEV_RETRIEVED_DEMONSTRATIONS if prefix
                         else vocabulary.RETRIEVED_DEMONSTRATIONS)
    if built.judge is not None:  # the reward model's verdict on the replies, against the reference policy
        judged, table = judging.judged(built, tasks, scores, built.judge,
                                       references.replies(tasks, scores, prefix, demonstrations),
                                       cfg.eval.batch_size, cfg.seed)
        metrics = metrics | judged
        records.log_table(table, vocabulary.DEV_JUDGED_REPLIES if prefix else vocabulary.JUDGED_REPLIES)
    return prefixed(metrics, prefix), scores


def score_lm(cfg: DictConfig, plan: Plan, built, reference_key: str | None):
    """(development and test metrics, the test pass's scores) of a policy or a baseline. With the
    test pass deferred (eval.sequential=true: settle.py scores the chosen runs' test examples after
    the sweep), the development metrics and what the test pass will show (its demonstrations)."""
    deferred = cfg.eval.sequential
    if deferred:
        records.set_tags({vocabulary.TEST_PASS: vocabulary.DEFERRED})
    if plan.method.searches_prompts:
        proposer = cfg.method.search.get("proposer")
        search = baselines.Search(cfg.method.search, plan.prompting_at, cfg.data.dev_size,
                                  cfg.eval.limit, cfg.eval.log_samples, plan.pool,
                                  (lambda: named_model(proposer, cfg.paths.cache, cfg.seed)) if proposer else None)
        choice = baselines.strongest(search, built.lm, lambda template: eval_tasks(cfg, template),
                                     score_test=not deferred)
        records.log_baseline_choice(choice.best, choice.panel, choice.demonstrations, cfg.data.dev_size,
                                    pool_suffix(cfg), choice.space)
        records.log_metrics(choice.dev_metrics)
        if deferred:
            return choice.dev_metrics, Scores({}, demonstrations=choice.demonstrations)
        if choice.scores.retrieved:  # (the chosen variant's test pass, auditable as a few_shot run's)
            records.log_json(choice.scores.retrieved, vocabulary.RETRIEVED_DEMONSTRATIONS)
        return choice.dev_metrics | choice.scores.metrics | choice.scores.query_cost(), choice.scores
    prompting = plan.prompting
    demonstrations = draw_demonstrations(built.eval_tasks, prompting, built.pools)  # the same for both passes
    references = ReferenceReplies(cfg, prompting, built, reference_key)
    dev = {}
    if built.dev_tasks:
        dev, _ = score_pass(cfg, built, built.dev_tasks, prompting, None, demonstrations, references, DEV_PREFIX)
        records.log_metrics(dev)
    if deferred:
        return dev, Scores({}, demonstrations=demonstrations)
    test, scores = score_pass(cfg, built, built.eval_tasks, prompting, cfg.eval.limit, demonstrations, references, "")
    references.record()
    return dev | test | scores.query_cost(), scores


def seen_material(cfg: DictConfig, plan: Plan, built, tasks: dict, slices: dict, generated: Path | None,
                  scores) -> dict[str, list[str]]:
    """{scored task: the texts this run could have learned from}: an adapter's training rows (the
    seeded subset it trained on, with the generated tasks mixed in; a preference stage's train split
    bar its development groups), and the demonstrations it was prompted with (every draw; with
    lm-eval's per-example sampling, the whole pool it samples from)."""
    texts: list[str] = []
    if cfg.method.trains:
        task = tasks[cfg.data.task]
        held = splits.held_from_training(task, slices.get(cfg.data.task, []))
        docs = task.dataset[cfg.data.train_split]
        if plan.stage.data == "examples" and not generated:
            order = splits.training_order(len(docs), cfg.data.max_train_samples, cfg.seed, held)
        else:
            order = [i for i in range(len(docs)) if i not in held]
        texts += [leakage.doc_text(docs[i]) for i in order]
        texts += [leakage.doc_text(d) for d in (read_generated(generated) if generated else [])]
    out = {}
    for name in cfg.eval.tasks:
        shown = [leakage.doc_text(d) for draw in (scores.demonstrations if scores else []) for d in draw.get(name, [])]
        if scores and not scores.demonstrations and plan.prompting.num_fewshot and built.pools.get(name):
            shown = [leakage.doc_text(d) for d in built.pools[name]]
        out[name] = texts + shown
    return out


def record_leakage(cfg: DictConfig, plan: Plan, built, tasks: dict, slices: dict, generated: Path | None,
                   scores) -> dict[str, float]:
    """The leakage audit of each scored task against what this run saw (sweep/scoring/leakage.py):
    `leakage.json` (each flagged test example it scored, by doc_id, with the text it overlaps) and
    metrics `leakage/<task>/flagged` of `leakage/<task>/scored`."""
    found, metrics = {}, {}
    for name, material in seen_material(cfg, plan, built, tasks, slices, generated, scores).items():
        task = tasks[name]
        flags = leakage.audit_task(task, material, Path(cfg.paths.cache) / "leakage")
        scored = min(len(task.eval_docs), cfg.eval.limit or len(task.eval_docs))
        found[name] = [asdict(f) for f in flags if f.doc_id < scored]
        metrics |= {f"{LEAKAGE_PREFIX}{name}/flagged": float(len(found[name])),
                    f"{LEAKAGE_PREFIX}{name}/scored": float(scored)}
    records.log_json(found, vocabulary.LEAKAGE)
    records.log_metrics(metrics)
    return metrics


def score_and_record(cfg: DictConfig, plan: Plan, built, reference_key: str | None = None) -> tuple[dict, object]:
    """Score with lm-eval (unless eval.enabled=false); log the scores, predictions and peak memory;
    return them and lm-eval's scores (None when nothing was scored by lm-eval).
    `reference_key`: of the reference policy's replies, for a judged run (sweep/stages/reference_replies.py)."""
    scored, scores = {}, None
    with memory.phase_peak() as peaks:  # (scoring's own peak: eval.batch_size bounds it, not gradient checkpointing)
        start = time.perf_counter()
        if cfg.eval.enabled and not plan.stage.is_policy:
            scored = score_reward_model(cfg, built)
        elif cfg.eval.enabled:
            scored, scores = score_lm(cfg, plan, built, reference_key)
            if scores.results:  # (none when the test pass is deferred: settle.py records it)
                records.log_eval_results(scores.results)
        if cfg.eval.enabled:
            scored |= {"eval_seconds": time.perf_counter() - start}
    for draw, metrics in enumerate(scores.by_draw if scores else []):
        records.log_metrics({f"draw/{k}": v for k, v in metrics.items() if not k.endswith("_stderr")}, step=draw)
    scored |= peaks.job | ({f"eval_{k}": v for k, v in peaks.phase.items()} if cfg.eval.enabled else {})
    records.log_metrics(scored)
    shown = {k: f"{v:.4g}" for k, v in scored.items() if is_task_metric(k)} or {"scoring": "off (eval.enabled=false)"}
    log.info("%s: %s", plan.run_name, ", ".join(f"{k}={v}" for k, v in shown.items()))
    return scored, scores
