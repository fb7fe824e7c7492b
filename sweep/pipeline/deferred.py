"""A test pass deferred by `eval.sequential=true`, scored block by block after the sweep (settle.py).

Which runs a task's primary claim compares is known only once the sweep is done (the adapter and the
baseline its development scores choose), so with eval.sequential=true every job scores its
development examples only and is tagged `test_pass=deferred`. settle.py then reads the chosen runs'
test examples in blocks and stops as soon as the confidence sequence decides (analysis/sequential.py):
the examples after that block are never scored.

This module is one such run: rebuilt from its recorded config (reproduce.py's rules for what a store
may set), its adapter fetched and checked as a later stage fetches its parent's
(sweep/stages/lineage.py) and loaded as it was trained (not merged), scored on any block of its
test examples as its job's test pass would have scored them (the same template, prompting and draws
of demonstrations; for a strongest baseline, its chosen variant's), and the examples it scored
recorded into the run as a test pass records them (`lm_eval_results.json`, `<task>/<metric>`), then
`test_pass=settled` on every run of the claim. A run's status is never touched: it finished when its
job did.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from omegaconf import DictConfig, open_dict

from sweep import vocabulary
from sweep.config import ConfigError
from sweep.data import splits
from sweep.pipeline.checks import validate
from sweep.pipeline.plan import Plan, plan_of
from sweep.pipeline.reproduce import recorded_config
from sweep.pipeline.score import eval_tasks
from sweep.scoring import baselines, fewshot
from sweep.scoring.evaluate import Prompting, draw_demonstrations, make_lm, score
from sweep.scoring.registry import set_generation
from sweep.scoring.results import flatten_metrics, top_share
from sweep.stages import lineage
from sweep.tracking import records
from sweep.tracking.untrusted import printable

log = logging.getLogger(__name__)


@dataclass
class DeferredRun:
    """One finished run whose test pass waits, ready to score any of its test examples on one task."""
    run_id: str
    name: str
    cfg: DictConfig          # its recorded config, checked
    task: str
    source: object           # the lm-eval task (its template's) whose test examples are scored
    lm: object
    tm: object
    prompting: Prompting
    pools: dict
    demonstrations: list     # each draw's demonstrations, as the job drew them
    metric: str              # the task's headline metric
    scored: list[dict] = field(default_factory=list)     # lm-eval's records of the examples scored, by test id
    retrieved: dict[int, list[int]] = field(default_factory=dict)  # a retrieved pass: id -> pool indices
    seconds: float = 0.0

    @property
    def available(self) -> int:
        """The test examples its test pass scores: the task's, the first eval.limit."""
        n = len(self.source.eval_docs)
        return min(n, self.cfg.eval.limit) if self.cfg.eval.limit else n

    def score(self, ids: list[int]) -> list[float]:
        """The headline score of each test example `ids` (in that order), scored now."""
        start = time.perf_counter()
        block = {self.task: splits.test_block(self.source, ids)}
        scores = score(self.lm, self.tm, block, self.prompting, None, log_samples=True, pools=self.pools or None,
                       demonstrations=self.demonstrations)
        self.seconds += time.perf_counter() - start
        found = sorted(scores.results["samples"][self.task], key=lambda s: s["doc_id"])
        for s in found:  # (lm-eval numbers the block's examples 0, 1, ...)
            s["doc_id"] = ids[s["doc_id"]]
        self.scored += found
        self.retrieved |= {ids[i]: given for i, given in scores.retrieved.get(self.task, {}).items()}
        return [float(s[self.metric]) for s in found]

    def results(self) -> dict:
        """The scored examples as a test pass's lm-eval results: per-example records by test id, the
        task's metrics over them (mean and standard error), how many of how many were read."""
        from lm_eval.api.metrics import mean_stderr

        values = {}
        for metric in [m for m in self.scored[0].get("metrics", [self.metric]) if m in self.scored[0]]:
            per_example = [float(s[metric]) for s in self.scored]
            values[f"{metric},none"] = statistics.fmean(per_example)
            values[f"{metric}_stderr,none"] = mean_stderr(per_example) if len(per_example) > 1 else float("nan")
        if "prediction" in self.scored[0]:
            values["top_prediction_share,none"] = top_share(self.scored)
        values["sample_len,none"] = len(self.scored)
        return {"results": {self.task: values}, "samples": {self.task: self.scored},
                "n-samples": {self.task: {"original": len(self.source.eval_docs), "effective": len(self.scored)}}}

    def record(self) -> dict[str, float]:
        """Into the run (its status untouched): the results, the metrics, the demonstrations a
        retrieved pass gave each example. Returns the metrics. (`settled` marks it done: after every
        run of the claim is recorded, so that a failure in between leaves all of them to settle again.)"""
        from lm_eval.utils import handle_non_serializable

        results = self.results()
        text = json.dumps(results, default=handle_non_serializable, indent=1)
        metrics = flatten_metrics(results["results"]) | {"settle_seconds": self.seconds}
        client = mlflow.MlflowClient()
        now = int(time.time() * 1000)

        def write():
            client.log_text(self.run_id, text, vocabulary.RESULTS)
            if self.retrieved:
                client.log_dict(self.run_id, {self.task: self.retrieved}, vocabulary.RETRIEVED_DEMONSTRATIONS)
            client.log_batch(self.run_id, metrics=[mlflow.entities.Metric(k, v, now, 0) for k, v in metrics.items()])
            client.set_tag(self.run_id, vocabulary.RESULTS_HASH_TAG, hashlib.sha256(text.encode()).hexdigest())
        records.stored(f"recording run {self.run_id}'s test examples", write)
        return metrics

    def settled(self) -> None:
        """Tag test_pass=settled: settle.py refuses it from now on."""
        client = mlflow.MlflowClient()
        records.stored(f"marking run {self.run_id} settled",
                       lambda: client.set_tag(self.run_id, vocabulary.TEST_PASS, vocabulary.SETTLED))


@dataclass(frozen=True)
class Checked:
    """A run whose test pass can be settled, as `checked` found it."""
    run_id: str
    name: str
    cfg: DictConfig                         # its recorded config, checked, reading this store
    plan: Plan
    variant: baselines.Variant | None       # a strongest baseline's chosen variant


def checked(run_id: str) -> Checked:
    """A run whose test pass can be settled: finished, deferred, rebuildable. ConfigError (one line)
    otherwise: nothing loads or is scored."""
    run = mlflow.MlflowClient().get_run(run_id)
    tags = run.data.tags
    name = printable(str(tags.get(vocabulary.RUN_NAME, run_id)))
    state = tags.get(vocabulary.TEST_PASS)
    if state != vocabulary.DEFERRED:
        did = "was settled already" if state == vocabulary.SETTLED else "scored its test examples when it ran"
        raise ConfigError(f"run {name} ({run_id}) {did}: settle.py scores runs whose test pass was deferred "
                          "(eval.sequential=true); sweep the chosen runs again with it")
    if run.info.status != "FINISHED":
        raise ConfigError(f"run {name} ({run_id}) is {run.info.status.lower()}, not finished: it cannot be settled")
    cfg, _ = recorded_config(run_id, log=log.info)
    with open_dict(cfg):
        cfg.tracking.uri = mlflow.get_tracking_uri()  # (its adapter is in this store, not the checkout's default)
    validate(cfg)
    plan = plan_of(cfg, sweep="", multirun=False)
    variant = chosen_variant(cfg, tags.get(vocabulary.BASELINE_VARIANT), name) if plan.method.searches_prompts \
        else None
    return Checked(run_id, name, cfg, plan, variant)


def deferred_run(run: Checked, task: str, metric: str) -> DeferredRun:
    """The run `checked` found, rebuilt to score its test examples of `task` by `metric`."""
    run_id, name, cfg, plan, variant = run.run_id, run.name, run.cfg, run.plan, run.variant
    if variant is not None:
        search = baselines.Search(cfg.method.search, plan.prompting_at, cfg.data.dev_size, cfg.eval.limit, True,
                                  plan.pool)
        prompting, template = baselines.reported_prompting(search, variant), variant.template
    else:
        prompting, template = plan.prompting, cfg.eval.template
    tm, tasks, pools = baselines.Templates(lambda t: eval_tasks(cfg, t), cfg.data.dev_size, plan.pool)(template)
    chosen = {task: tasks[task]}
    set_generation(chosen, cfg.eval.generation)  # (a generation task decodes as the job's pass did)
    lm = scorer(cfg, plan, run_id)
    log.info("settling %s (%s) on %s: template %s, %d demonstrations", name, run_id, task, template,
             prompting.num_fewshot)
    return DeferredRun(run_id, name, cfg, task, tasks[task], lm, tm, prompting,
                       {task: pools[task]} if prompting.num_fewshot else {},
                       draw_demonstrations(chosen, prompting, pools), metric)


def chosen_variant(cfg: DictConfig, label: str | None, name: str) -> baselines.Variant:
    """The strongest baseline's chosen variant: the one of its recorded search space with the label
    its run recorded (compared, never parsed: the store is untrusted)."""
    found = [v for v in baselines.variants(cfg.method.search) if v.label() == label]
    if not found:
        raise ConfigError(f"run {name}: its chosen variant is not one of its search space's without a searched "
                          "instruction; settle.py rebuilds those only: search with method.search.instructions=0, "
                          "or set eval.sequential=false")
    return found[0]


def scorer(cfg: DictConfig, plan: Plan, run_id: str):
    """lm-eval's model of the run: the base model, with the run's LoRA adapter (fetched, checked
    against the sha256 its run recorded) when it trained one."""
    from peft import PeftModel

    from sweep.training.models import base_model_identity, load_model_and_tokenizer

    cache = Path(cfg.paths.cache)
    policy = ()
    if cfg.method.trains:  # (checked before the model loads)
        policy = lineage.resolve(cfg.stage, run_id, None, plan.lineage, base_model_identity(cfg.model, cfg.seed),
                                 cache / "adapters").policy
    model, tokenizer = load_model_and_tokenizer(cfg.model, cache, cfg.seed, cfg.method.quantization)
    if policy:
        model = PeftModel.from_pretrained(lineage.merged(model, policy[:-1]), str(policy[-1].adapter))
    model.eval()
    lm = make_lm(model, tokenizer, cfg.eval.batch_size)
    fewshot.keep_pool_vectors_in(lm, cache / "retrieval")
    return lm
