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
import time
from dataclasses import dataclass, field

from omegaconf import DictConfig

from sweep.config import ConfigError
from sweep.scoring import calibration, fewshot
from sweep.scoring.checks import RETRIEVED
from sweep.scoring.environment_once import gather_environment_once
from sweep.scoring.registry import check_fewshot_pool, uses_chat_template
from sweep.scoring.results import (
    QUERY_SECONDS,
    QUERY_TOKENS,
    by_task_name,
    combine_draws,
    flatten_metrics,
    record_predictions,
)


def make_lm(model, tokenizer, batch_size: int, prefix_cache: bool = True, length_batched: bool = True):
    """lm-eval's HFLM around an in-memory model (peft-wrapped or not), with the shared prompt
    prefix of k-shot requests computed once (sweep/scoring/prefix_cache.py) and generation batched
    by a token budget (sweep/scoring/generation.py). `prefix_cache=False` drops the first,
    `length_batched=False` as well the second (lm-eval's own HFLM): the benchmark's side-by-side."""
    from lm_eval.models.huggingface import HFLM

    from sweep.scoring.generation import LengthBatchedLM
    from sweep.scoring.prefix_cache import PrefixCachedLM

    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)  # "pretrained is not a str"
    lm_class = PrefixCachedLM if prefix_cache else LengthBatchedLM if length_batched else HFLM
    return lm_class(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


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
    retriever: str = "tfidf"             # sampler=retrieved: tfidf | hidden (sweep/scoring/fewshot.py)

    @classmethod
    def from_config(cls, e: DictConfig, num_fewshot: int, seed: int) -> Prompting:
        """From the eval group, with `num_fewshot` demonstrations (the method's, or a searched variant's)."""
        if not num_fewshot:  # no demonstrations: how they would be drawn does not matter (nor in the cache's key)
            return cls(calibrate=e.calibrate, content_free=tuple(e.content_free), seed=seed)
        retrieved = e.fewshot_sampler == RETRIEVED  # (chosen per scored example, deterministically: one draw)
        return cls(num_fewshot=num_fewshot, sampler=e.fewshot_sampler, draws=1 if retrieved else e.fewshot_draws,
                   per_example=e.fewshot_per_example or retrieved, calibrate=e.calibrate,
                   content_free=tuple(e.content_free), fewshot_as_multiturn=e.fewshot_as_multiturn, seed=seed,
                   retriever=e.retriever)

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
    queries: int = 0          # examples scored, over every task and draw
    prompt_tokens: int = 0    # their prompts' tokens, demonstrations included
    seconds: float = 0.0      # the pass's wall time (calibration's extra passes included)
    demonstrations: list = field(default_factory=list)  # per draw {task: docs} prompted with ([]: none, or per example)
    retrieved: dict = field(default_factory=dict)  # eval.fewshot_sampler=retrieved: {task: {doc_id: pool indices}}

    def query_cost(self) -> dict[str, float]:
        """What a query of this pass costs: prompt tokens and measured seconds per 1,000 queries."""
        if not self.queries:
            return {}
        return {QUERY_TOKENS: self.prompt_tokens / self.queries, QUERY_SECONDS: 1000 * self.seconds / self.queries}


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

    start = time.perf_counter()
    gather_environment_once()  # (lm-eval gathers it at every call: 0.5 s; sweep/scoring/environment_once.py)
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
    draws, queries, tokens = [], 0, 0
    for d in range(prompting.draws):
        seed = fewshot.draw_seed(prompting.seed, d)
        drawn = set_samplers(tasks, prompting, pools, seed, demonstrations[d] if demonstrations else {}, lm)
        results = simple_evaluate(
            model=lm, tasks=list(tasks.values()), task_manager=tm, num_fewshot=prompting.num_fewshot, limit=limit,
            log_samples=needs_samples, bootstrap_iters=1000, random_seed=prompting.seed,
            numpy_random_seed=prompting.seed, torch_random_seed=prompting.seed, fewshot_random_seed=seed,
            apply_chat_template=chat, fewshot_as_multiturn=chat and prompting.fewshot_as_multiturn,
        )
        results = by_task_name(results, tasks)
        queries, tokens = (a + b for a, b in zip((queries, tokens), prompt_sizes(lm, tasks)))
        for name, task in tasks.items():
            if task.OUTPUT_TYPE == "multiple_choice":
                p_cf = content_free_bias(lm, task, prompting, chat) if prompting.calibrate else None
                record_predictions(results, name, p_cf)
        draws.append({"seed": seed, "demonstrations": drawn, "results": results})
    retrieved = {name: given_per_example(task, limit) for name, task in tasks.items()
                 if isinstance(getattr(task, "sampler", None), fewshot.RetrievedSampler)}
    combined = combine_draws(draws, log_samples)
    by_draw = [flatten_metrics(d["results"]["results"]) for d in draws] if len(draws) > 1 else []
    return Scores(flatten_metrics(combined["results"]), combined, by_draw, queries, tokens,
                  time.perf_counter() - start, [d["demonstrations"] for d in draws if d["demonstrations"]], retrieved)


def given_per_example(task, limit: int | None) -> dict[int, list[int]]:
    """{doc_id: the pool indices of the demonstrations it was prompted with} of a retrieved pass."""
    docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
    return {i: task.sampler.given.get(fewshot.doc_text(d), []) for i, d in enumerate(docs)}


def prompt_sizes(lm, tasks: dict) -> tuple[int, int]:
    """(examples, their prompts' tokens) of the requests lm-eval just scored (each example's first
    request: its prompt, with the demonstrations)."""
    firsts = [i for task in tasks.values() for i in (task.instances or []) if i.idx == 0]
    return len(firsts), sum(len(lm.tok_encode(i.args[0])) for i in firsts)


def _multiple_choice(tasks: dict) -> bool:
    return any(t.OUTPUT_TYPE == "multiple_choice" for t in tasks.values())


def set_samplers(tasks: dict, prompting: Prompting, pools: dict, seed: int,
                 fixed: dict[str, list[dict]], lm=None) -> dict[str, list[dict]]:
    """Give each task the sampler of this draw (`fixed`: its demonstrations per task); return them."""
    if not prompting.num_fewshot:
        return {}
    for name, task in tasks.items():
        if prompting.per_example and prompting.sampler == RETRIEVED:
            embed = fewshot.hidden_states_of(lm) if prompting.retriever == "hidden" else None
            fewshot.retrieving(task, fewshot.RetrievedSampler(pools[name], label_of=task.doc_to_target, embed=embed,
                                                              indexes=fewshot.retrieval_indexes(lm)))
        elif prompting.per_example:
            task.sampler = fewshot.demonstration_sampler(prompting.sampler, pools[name], task.doc_to_target, seed)
        else:
            task.sampler = fewshot.FixedDraw(fixed[name])
    return {} if prompting.per_example else {name: fixed[name] for name in tasks}


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


