"""Baselines done right: templates, balanced and fixed draws, calibration, the development slice,
prefix-cached k-shot scoring equal to lm-eval's."""

import statistics
from collections import Counter

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from sweep.config import ConfigError
from sweep.data import splits
from sweep.pipeline.build import load_project_tasks
from sweep.pipeline.checks import validate
from sweep.pipeline.plan import plan_of
from sweep.scoring import baselines, calibration
from sweep.scoring.evaluate import Prompting, make_lm, score
from sweep.scoring.fewshot import BalancedSampler, FixedDraw, draw, draw_seed
from sweep.scoring.prefix_cache import MIN_SHARED_TOKENS, shared_prefix_length
from sweep.scoring.results import record_predictions
from tests.conftest import compose


def tasks_for(template="default", tasks="[sst2]"):
    return load_project_tasks(compose("model=tiny", "method=zero_shot", f"eval.tasks={tasks}",
                                      f"eval.template={template}"))


@pytest.fixture(scope="module")
def sst2_pool():
    return list(tasks_for()[1]["sst2"].dataset["train"].select(range(300)))


def test_balanced_draws_have_equal_counts_per_label_and_repeat_with_their_seed(sst2_pool):
    label = lambda d: d["label"]  # noqa: E731
    for k in (4, 16):
        demos = draw("balanced", sst2_pool, k, label, seed=3)
        assert Counter(map(label, demos)) == {0: k // 2, 1: k // 2}
    assert draw("balanced", sst2_pool, 4, label, seed=3) == draw("balanced", sst2_pool, 4, label, seed=3)
    assert draw("balanced", sst2_pool, 4, label, seed=3) != draw("balanced", sst2_pool, 4, label, seed=4)
    odd = draw("balanced", sst2_pool, 5, label, seed=0)
    assert sorted(Counter(map(label, odd)).values()) == [2, 3]
    # shuffled, not grouped by label: over many draws the first demonstration has either label
    assert {label(draw("balanced", sst2_pool, 4, label, seed=s)[0]) for s in range(20)} == {0, 1}
    # the example being scored is never its own demonstration
    sampler = BalancedSampler(sst2_pool[:6], label_of=label, rnd=0)
    assert all(sst2_pool[0] not in sampler.sample(2, eval_doc=sst2_pool[0]) for _ in range(20))


def test_draws_differ_by_seed_and_random_draws_are_lm_evals_sampler(sst2_pool):
    seeds = [draw_seed(0, d) for d in range(3)]
    assert len(set(seeds)) == 3 and seeds == [draw_seed(0, d) for d in range(3)] and draw_seed(1, 0) != seeds[0]
    a, b = (draw("random", sst2_pool, 4, None, s) for s in seeds[:2])
    assert a != b and a == draw("random", sst2_pool, 4, None, seeds[0])


def test_a_fixed_draw_puts_the_same_demonstrations_before_every_example(tiny):
    tm, tasks = tasks_for()
    lm = make_lm(*tiny, batch_size=8)
    scores = score(lm, tm, tasks, Prompting(num_fewshot=2, draws=2, seed=0), limit=6, log_samples=True)
    [first, second] = scores.results["draws"]
    assert first["demonstrations"]["sst2"] != second["demonstrations"]["sst2"]
    demos = first["demonstrations"]["sst2"]
    prefix = f"{demos[0]['sentence'].strip()}\nQuestion:"
    prompts = [s["arguments"][0][0] for s in scores.results["samples"]["sst2"]]
    assert all(p.startswith(prefix) and p.count("Answer:") == 3 for p in prompts)
    # mean and sd over the two draws; per-example scores averaged over draws
    by_draw = [d["sst2/acc"] for d in scores.by_draw]
    assert scores.metrics["sst2/acc"] == pytest.approx(statistics.fmean(by_draw))
    assert scores.metrics["sst2/acc_draw_sd"] == pytest.approx(statistics.stdev(by_draw))
    per_example = [s["acc"] for s in scores.results["samples"]["sst2"]]
    assert statistics.fmean(per_example) == pytest.approx(scores.metrics["sst2/acc"])
    assert all(len(s["acc_by_draw"]) == 2 for s in scores.results["samples"]["sst2"])


def test_a_task_scored_zero_shot_is_scored_k_shot_when_asked_again(tiny):
    """lm-eval keeps a task zero-shot once it was (its config's num_fewshot=0 is never overridden);
    the strongest-baseline search scores the same task objects at several k."""
    tm, tasks = tasks_for()
    lm = make_lm(*tiny, batch_size=8)
    for k in (0, 2, 0):
        scores = score(lm, tm, tasks, Prompting(num_fewshot=k, draws=1), limit=3, log_samples=True)
        prompts = [s["arguments"][0][0] for s in scores.results["samples"]["sst2"]]
        assert all(p.count("Answer:") == k + 1 for p in prompts), k


def test_per_example_sampling_stays_available(tiny):
    tm, tasks = tasks_for()
    scores = score(make_lm(*tiny, batch_size=8), tm, tasks, Prompting(num_fewshot=2, per_example=True), limit=4,
                   log_samples=True)
    prompts = [s["arguments"][0][0] for s in scores.results["samples"]["sst2"]]
    assert len({p.split("\n")[0] for p in prompts}) > 1  # each example its own demonstrations


def test_calibration_moves_a_biased_prediction_to_the_right_label():
    # The prompt alone makes the model prefer label 0 (p_cf = 0.8 / 0.2); an example of label 1 with
    # p = 0.6 / 0.4 is predicted 0 as it stands, and 1 once divided by p_cf (0.75 < 2.0).
    p_cf = calibration.bias([[-0.1, -2.4], [-0.3, -1.5]])
    assert p_cf[0] > 0.75 and sum(p_cf) == pytest.approx(1)
    logliks = [-0.511, -0.916]  # log 0.6, log 0.4
    assert max(range(2), key=logliks.__getitem__) == 0
    assert calibration.calibrated_prediction(logliks, p_cf) == 1
    # on logged lm-eval samples: acc becomes the calibrated one, lm-eval's own is kept
    results = {"samples": {"t": [{"filtered_resps": [(-0.511, False), (-0.916, False)], "target": 1, "acc": 0.0},
                                 {"filtered_resps": [(-0.1, False), (-3.0, False)], "target": 0, "acc": 1.0}]},
               "results": {"t": {"acc,none": 0.5, "acc_stderr,none": 0.5}}}
    record_predictions(results, "t", p_cf)
    values = results["results"]["t"]
    assert values["acc,none"] == 1.0 and values["acc_uncalibrated,none"] == 0.5
    assert values["top_prediction_share_uncalibrated,none"] == 1.0 and values["top_prediction_share,none"] == 0.5
    assert [s["prediction"] for s in results["samples"]["t"]] == [1, 0]


def test_content_free_inputs_keep_labels_and_use_the_same_prompt(tiny):
    doc = {"idx": 7, "sentence": "a fine film", "label": 1}
    assert calibration.content_free_doc(doc, "N/A") == {"idx": 7, "sentence": "N/A", "label": 1}
    tm, tasks = tasks_for()
    scores = score(make_lm(*tiny, batch_size=8), tm, tasks, Prompting(num_fewshot=2, calibrate=True), limit=6,
                   log_samples=True)
    values = scores.results["results"]["sst2"]
    assert len(values["content_free_probs"]) == 2 and sum(values["content_free_probs"]) == pytest.approx(1)
    assert {"sst2/acc", "sst2/acc_uncalibrated", "sst2/top_prediction_share"} <= set(scores.metrics)


@pytest.mark.parametrize("template", ["default", "chat"])
def test_prefix_cached_k_shot_scores_equal_lm_evals(tiny, sst2_pool, template):
    tm, tasks = tasks_for(template)
    task = tasks["sst2"]
    task.sampler = FixedDraw(draw("balanced", sst2_pool, 4, task.doc_to_target, 0))
    cached, stock = make_lm(*tiny, batch_size=8), HFLM(pretrained=tiny[0], tokenizer=tiny[1], batch_size=8)
    chat = template == "chat"
    requests = []
    for doc in task.dataset["validation"].select(range(12)):
        context = task.fewshot_context(doc, 4, apply_chat_template=chat, fewshot_as_multiturn=chat,
                                       chat_template=cached.apply_chat_template if chat else None)
        requests += task.construct_requests(doc, context, metadata=("sst2", 0, 1), apply_chat_template=chat)
    encoded = [cached._encode_pair(*r.args)[0] for r in requests]
    assert len(requests) == 24 and shared_prefix_length(encoded) > 4 * MIN_SHARED_TOKENS  # the cached path runs
    ours, theirs = cached.loglikelihood(requests, disable_tqdm=True), stock.loglikelihood(requests, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(ours, theirs)) < 1e-4
    assert [a[1] for a in ours] == [b[1] for b in theirs]


@pytest.mark.parametrize("selective", [True, False])
def test_multi_token_answers_and_a_lora_model_match_lm_eval_too(tiny, monkeypatch, selective):
    """Answers of several tokens at different positions in one batch (logits kept there only), and a
    model without `logits_to_keep` (every position's logits, as lm-eval)."""
    from peft import LoraConfig, get_peft_model

    from sweep.scoring import prefix_cache

    model = get_peft_model(tiny[0], LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights="gaussian"))
    assert prefix_cache.keeps_logits(model)
    monkeypatch.setattr(prefix_cache, "keeps_logits", lambda m: selective)
    try:
        cached, stock = make_lm(model, tiny[1], batch_size=3), HFLM(pretrained=model, tokenizer=tiny[1], batch_size=3)
        shared = "A shared instruction that is long enough to be cached. " * 4
        requests = [Instance("loglikelihood", {}, (shared + q, a), 0)
                    for q in ("Is it good?", "Is it bad? Tell me") for a in (" yes it is", " no", " maybe so")]
        ours, theirs = cached.loglikelihood(requests, disable_tqdm=True), stock.loglikelihood(requests, disable_tqdm=True)
        assert max(abs(a[0] - b[0]) for a, b in zip(ours, theirs)) < 1e-4
        assert [a[1] for a in ours] == [b[1] for b in theirs]
    finally:
        model.unload()


def test_the_development_slice_never_overlaps_the_reported_split_or_the_demonstrations():
    _, tasks = tasks_for()
    task = tasks["sst2"]
    idx = splits.dev_indices(task, 300)
    assert len(set(idx)) == 300 and idx == splits.dev_indices(task, 300)
    dev = splits.dev_task(task, idx)
    reported = {task.doc_to_text(d) for d in task.eval_docs}
    dev_docs = list(dev.eval_docs)
    assert len(dev_docs) == 300 and not reported & {dev.doc_to_text(d) for d in dev_docs}
    assert list(task.eval_docs) != dev_docs and len(task.eval_docs) == 1000  # the original task is untouched
    pool = splits.demonstration_pool(task, idx)
    assert len(pool) == len(task.dataset["train"])  # (SST-2's development sentences are a split of their own)
    assert not {d["idx"] for d in pool} & {d["idx"] for d in dev_docs}


def test_variants_are_distinct_simplest_first_and_name_their_equivalent_run():
    cfg = compose("method=strongest_baseline", "method.search.template=[default,chat]")
    vs = baselines.variants(cfg.method.search)
    assert len(vs) == 2 * (2 + 4) and vs[0] == baselines.Variant("default", 0, "random", False)
    assert [v.label() for v in vs[:4]] == ["zero_shot", "zero_shot-chat", "zero_shot-cal", "zero_shot-cal-chat"]
    assert "few_shot-k4-balanced-cal-chat" in [v.label() for v in vs]
    assert baselines.Variant("plain", 4, "balanced", True).overrides() == [
        "method=few_shot", "eval.template=plain", "eval.num_fewshot=4", "eval.fewshot_sampler=balanced",
        "eval.calibrate=true"]
    # The full preset (docs/baselines.md): 3 templates x 2 calibrations x 5 instructions (the template's own and
    # 4 proposed) x (zero-shot + k in {4, 8, 16} x 3 samplers) = 300 variants.
    full = compose("method=strongest_baseline_full").method.search
    proposed = tuple(f"Instruction {i}." for i in range(full.instructions))
    assert len(baselines.variants(full, proposed)) == 3 * 2 * 5 * (1 + 3 * 3) == 300
    # What a claim against the chosen variant names: the space it was chosen among.
    assert baselines.described(compose("method=strongest_baseline").method.search) == (
        "the best on development data of 18 prompting variants (templates default, plain, chat; k 0, 4; "
        "demonstrations random, balanced; calibration off, on)")
    assert baselines.described(full, proposed) == (
        "the best on development data of 300 prompting variants (templates default, plain, chat; k 0, 4, 8, 16; "
        "demonstrations random, balanced, retrieved; calibration off, on; instructions: the template's own and 4 "
        "searched)")


@pytest.mark.parametrize("overrides,needle", [
    (["eval.template=plian"], "eval.template='plian': task sst2 has no such template (no task sst2_plian) "
                              "(did you mean: plain?); its templates are: default, chat, plain"),
    (["data=self_instruct", "eval.template=plain"], "eval.template='plain': task self_instruct has no such template"),
    (["data=self_instruct", "method=strongest_baseline"], "method.search.template='plain': task self_instruct"),
    (["data=self_instruct", "method=few_shot", "eval.fewshot_sampler=balanced"],
     "eval.fewshot_sampler=balanced: task self_instruct has no labels"),
    (["data=self_instruct", "eval.calibrate=true"], "eval.calibrate=true: task self_instruct is not multiple choice"),
])
def test_prompting_errors_name_the_key_before_any_compute(overrides, needle):
    from sweep.pipeline.build import build

    cfg = compose("model=tiny", "method=zero_shot", *overrides)
    validate(cfg)
    with pytest.raises(ConfigError) as e:
        tm, _ = load_project_tasks(cfg)
        if cfg.method.name == "strongest_baseline":
            baselines.check_search(cfg.method.search, tm, cfg.eval.tasks)
        build(cfg) if "method=strongest_baseline" not in overrides else None
    assert needle in str(e.value)


@pytest.mark.parametrize("override,needle", [
    ("eval.fewshot_sampler=stratified", "eval.fewshot_sampler='stratified' is invalid: choose one of random, balanced"),
    ("eval.fewshot_draws=0", "eval.fewshot_draws=0 is invalid"),
    ("eval.calibrate=yes", "eval.calibrate='yes' is invalid: must be true or false"),
    ("eval.content_free=[]", "eval.content_free=[] is invalid"),
    ("method.search.p_threshold=2", "method.search.p_threshold=2 is invalid"),
    ("method.search.n_startup_steps=1", "method.search.n_startup_steps=1 is invalid"),
    ("method.search.num_fewshot=[-1]", "method.search.num_fewshot=[-1] is invalid"),
])
def test_prompting_keys_are_checked(override, needle):
    extra = ["method=strongest_baseline"] if override.startswith("method.") else []
    with pytest.raises(ConfigError, match=None) as e:
        validate(compose(*extra, override))
    assert needle in str(e.value)


def test_calibration_needs_a_fixed_draw():
    with pytest.raises(ConfigError, match="needs a fixed draw of demonstrations: set eval.fewshot_per_example=false"):
        validate(compose("method=few_shot", "eval.calibrate=true", "eval.fewshot_per_example=true"))


def test_the_baseline_cache_key_changes_with_the_scoring_code(monkeypatch):
    from sweep.pipeline.build import task_files
    from sweep.runtime import files
    from sweep.scoring import baseline_cache

    cfg = compose("model=tiny", "method=few_shot")
    tm, tasks = load_project_tasks(cfg)
    key = baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks))
    assert key == baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks))
    real = files.sha256  # (the scoring code is hashed by module, wherever its file now lives)
    monkeypatch.setattr(files, "sha256", lambda p: "edited" if p.name == "prefix_cache.py" else real(p))
    assert baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks)) != key


def test_the_baseline_cache_key_changes_with_the_decoding_of_generation_tasks():
    """A sampled zero-shot pass is not the greedy one: eval.generation is in the key."""
    from sweep.pipeline.build import task_files
    from sweep.scoring import baseline_cache

    def key(*overrides):
        cfg = compose("model=tiny", "method=zero_shot", "data=self_instruct", *overrides)
        tm, tasks = load_project_tasks(cfg)
        return baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks))

    greedy = key()
    assert key("eval.generation.do_sample=true") != greedy
    assert key("eval.generation.max_gen_toks=16") not in (greedy, key("eval.generation.max_gen_toks=32"))


def test_a_baseline_with_another_instruction_is_another_baseline_in_the_cache():
    """eval.instruction replaces the template's instruction on the loaded tasks (the YAML hashed in
    the key is unchanged): it is in the key, or a searched instruction's run would reuse the
    template's own scores (it did, on the held-apart sentences, before this key held it)."""
    from sweep.pipeline.build import task_files
    from sweep.scoring import baseline_cache

    def key(*overrides):
        cfg = compose("model=tiny", "method=zero_shot", "eval.template=plain", *overrides)
        tm, tasks = load_project_tasks(cfg)
        return baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks))

    own = key()
    assert key('eval.instruction="Say positive or negative."') not in (own, key('eval.instruction="Classify."'))


def test_the_baseline_cache_key_is_the_content_not_the_checkout(tmp_path, monkeypatch):
    """Two clones share their baselines; an edited `!function` hook, other model weights or another
    library version do not."""
    import importlib.metadata
    import shutil

    from sweep.pipeline.build import task_files
    from sweep.scoring import baseline_cache
    from tests.conftest import ROOT

    def key(*overrides):
        cfg = compose("model=tiny", "method=few_shot", *overrides)
        tm, tasks = load_project_tasks(cfg)
        return baseline_cache.cache_key(plan_of(cfg).baseline, tm, task_files(tasks))

    here = key()
    for folder in ("tasks", "data"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    clone = [f"paths.tasks={tmp_path}/tasks", f"paths.data={tmp_path}/data", f"paths.cache={tmp_path}/cache"]
    assert key(*clone) == here  # another checkout, its own model cache built afresh: the same content
    [model] = [p for p in (tmp_path / "cache" / "models").glob("from_config-*") if p.is_dir()]
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    assert key(*clone) != here
    shutil.rmtree(model)
    assert key(*clone) == here
    hook = tmp_path / "tasks" / "local_data.py"
    hook.write_text(hook.read_text() + "\n# edited\n")
    assert key(*clone) != here
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0" if name == "torch" else real(name))
    assert key() != here


def test_the_strongest_baseline_is_reported_with_the_draws_it_was_chosen_with(tiny, monkeypatch):
    """The development passes and the test pass of the chosen variant put the same demonstrations,
    in the same order, before every example (its draws are not drawn again for the test)."""
    from sweep.pipeline.score import eval_tasks
    from sweep.scoring import evaluate

    cfg = compose("model=tiny", "method=strongest_baseline", "method.search.template=[default]",
                  "method.search.num_fewshot=[2]", "method.search.fewshot_sampler=[balanced]", "data.dev_size=12",
                  "method.search.n_startup_steps=4", "eval.fewshot_draws=2", "method.search.oracle=none")
    passes, real = [], evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda *a, **kw: passes.append(real(*a, **kw)) or passes[-1])
    search = baselines.Search(cfg.method.search, plan_of(cfg).prompting_at, 12, 6, True)
    choice = baselines.strongest(search, make_lm(*tiny, batch_size=8), lambda t: eval_tasks(cfg, t))
    *development, test = passes
    assert len(development) == 3 and test is choice.scores  # prefixes of 4, 8 and 12 examples, then the test pass
    prefix = lambda scores: scores.results["samples"]["sst2"][0]["arguments"][0][0].rsplit("\n\n", 1)[0]  # noqa: E731
    assert {prefix(p) for p in passes} == {prefix(test)}  # draw 0's demonstrations before every example
    for p in passes:
        assert [d["demonstrations"] for d in p.results["draws"]] == choice.demonstrations
    task = eval_tasks(cfg, "default")[1]["sst2"]
    dev_texts = {splits.text_of(task, d) for d in splits.dev_task(task, splits.dev_indices(task, 12)).eval_docs}
    shown = {splits.text_of(task, d) for draw in choice.demonstrations for d in draw["sst2"]}
    assert not shown & dev_texts  # a development example is never a demonstration
    assert choice.dev_metrics["dev/sst2/acc"] == pytest.approx(
        next(r["dev_mean"] for r in choice.panel if r["chosen"]))


def test_the_chosen_pass_is_its_own_oracle(tiny, monkeypatch):
    """A calibrated test pass holds the uncalibrated scores too: the oracle line reads it instead
    of scoring the same pass on the test examples again, and states the reported score."""
    from sweep.pipeline.score import eval_tasks
    from sweep.scoring import evaluate

    cfg = compose("model=tiny", "method=strongest_baseline", "method.search.template=[default]",
                  "method.search.num_fewshot=[0]", "method.search.calibrate=[true]", "data.dev_size=8",
                  "method.search.n_startup_steps=4", "method.search.oracle=finished")
    passes, real = [], evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda *a, **kw: passes.append(real(*a, **kw)) or passes[-1])
    search = baselines.Search(cfg.method.search, plan_of(cfg).prompting_at, 8, 6, True)
    choice = baselines.strongest(search, make_lm(*tiny, batch_size=8), lambda t: eval_tasks(cfg, t))
    assert passes[-1] is choice.scores and len(passes) == 3  # prefixes of 4 and 8 examples, then test once
    [row] = [r for r in choice.panel if r["chosen"]]
    assert row["test_mean"] == choice.scores.metrics["sst2/acc"]
