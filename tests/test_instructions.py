"""Searched instructions: proposals from train examples (APE's two prompts), cleaned to something an
override can carry, raced as variants on the development slice, reproduced by eval.instruction."""

import re

import pytest

from sweep.config import ConfigError
from sweep.scoring import baselines, instructions
from tests.conftest import compose


def test_a_completion_becomes_an_instruction_an_override_can_carry_or_nothing():
    assert instructions.clean("  classify each review as positive or negative\nInput: x") == \
        "Classify each review as positive or negative."
    assert instructions.clean('say "yes" ${oops} \\ or no') == "Say yes oops or no."  # (no quotes, braces, $)
    assert instructions.clean("to to to to to") == "" and instructions.clean("yes") == ""


def test_proposals_are_deterministic_distinct_and_see_only_the_examples_given(monkeypatch):
    prompts = []

    def fake_generate(model, tokenizer, prompt):
        prompts.append(prompt)
        if prompt.startswith("Generate a variation"):
            return " rate the review's sentiment, positive or negative"
        return f" label the sentiment of review number {len(prompts) % 2}"

    monkeypatch.setattr(instructions, "generate", fake_generate)
    examples = [(f"review {i}", "positive" if i % 2 else "negative") for i in range(20)]
    found = instructions.propose(None, None, examples, 3, seed=5)
    assert found == ["Label the sentiment of review number 1.", "Label the sentiment of review number 0.",
                     "Rate the review's sentiment, positive or negative."]
    shown = [p for p in prompts if p.startswith("I gave a friend")]
    assert all(p.count("Input: review") == instructions.PAIRS for p in shown)
    prompts.clear()
    assert instructions.propose(None, None, examples, 3, seed=5) == found  # (the same seed, the same search)


def test_instructions_are_a_dimension_of_the_search_and_reproduce_as_eval_instruction():
    search = compose("method=strongest_baseline", "method.search.template=[plain]", "method.search.num_fewshot=[0]",
                     "method.search.calibrate=[false]").method.search
    found = baselines.variants(search, ("Say whether the review is positive or negative.",))
    assert [v.instruction for v in found] == [None, "Say whether the review is positive or negative."]
    searched = found[1]
    assert searched.label().startswith("zero_shot-instr") and searched.label().endswith("-plain")
    assert 'eval.instruction="Say whether the review is positive or negative."' in searched.overrides()
    assert len(baselines.units(search, ("a b c.", "d e f."))) == 3  # (each instruction its own scoring pass)


def test_eval_instruction_replaces_the_templates_instruction_in_every_prompt(tiny):
    from sweep.pipeline.build import load_project_tasks
    from sweep.scoring.evaluate import Prompting, make_lm, score

    cfg = compose("model=tiny", "method=zero_shot", "eval.template=chat",
                  'eval.instruction="Answer positive or negative, nothing else."')
    tm, tasks = load_project_tasks(cfg)
    scores = score(make_lm(tiny[0], tiny[1], batch_size=8), tm, tasks, Prompting(), limit=2, log_samples=True)
    prompt = scores.results["samples"]["sst2"][0]["arguments"][0][0]
    assert "Answer positive or negative, nothing else." in prompt and "Classify the sentiment" not in prompt


@pytest.mark.parametrize("overrides, message", [
    (["method=lora", "eval.instruction=Be brief."], "eval.instruction='Be brief.' is invalid: must be null or"),
    (["method=strongest_baseline", "method.search.instructions=17"], "method.search.instructions=17 is invalid"),
    (["method=strongest_baseline", "method.search.proposer=gpt5"],
     "method.search.proposer='gpt5' is invalid: must be null (the model under test proposes) or a model config: "
     "smollm2_135m, tiny"),
])
def test_bad_instruction_settings_are_refused(overrides, message):
    from sweep.pipeline.checks import validate

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose("model=tiny", *overrides))


def test_the_race_scores_each_proposed_instruction_on_development_examples_only(tiny, monkeypatch):
    """Proposed from the train role's pool (never a development or test example), each instruction is
    one more variant in the race; its development passes and the chosen one's test pass prompt with it."""
    from sweep.data import splits
    from sweep.pipeline.plan import plan_of
    from sweep.pipeline.score import eval_tasks
    from sweep.scoring import evaluate
    from sweep.scoring.evaluate import make_lm
    from sweep.scoring.leakage import doc_text

    seen = {}

    def fake_propose(model, tokenizer, examples, n, seed):
        seen["examples"] = [x for x, _ in examples]
        return ["Say positive or negative for the review.", "Name the review's sentiment in one word."][:n]

    monkeypatch.setattr(instructions, "propose", fake_propose)
    cfg = compose("model=tiny", "method=strongest_baseline", "method.search.template=[plain]",
                  "method.search.num_fewshot=[0]", "method.search.calibrate=[false]", "method.search.instructions=2",
                  "data.dev_size=8", "method.search.n_startup_steps=4", "method.search.oracle=none")
    passes, real = [], evaluate.score
    monkeypatch.setattr(evaluate, "score", lambda *a, **kw: passes.append(real(*a, **kw)) or passes[-1])
    search = baselines.Search(cfg.method.search, plan_of(cfg).prompting_at, 8, 4, True)
    choice = baselines.strongest(search, make_lm(*tiny, batch_size=8), lambda t: eval_tasks(cfg, t))
    assert {r["instruction"] for r in choice.panel} == {None, "Say positive or negative for the review.",
                                                          "Name the review's sentiment in one word."}
    prompts = {s["arguments"][0][0] for p in passes for s in p.results["samples"]["sst2"]}
    for instruction in ("Say positive or negative for the review.", "Name the review's sentiment in one word."):
        assert any(instruction in prompt for prompt in prompts)  # (its development passes prompt with it)
    task = eval_tasks(cfg, "plain")[1]["sst2"]
    dev = splits.dev_task(task, splits.dev_indices(task, 8)).eval_docs
    held = {doc_text(d) for d in [*dev, *task.eval_docs]}
    assert len(seen["examples"]) > 1000 and not held & set(seen["examples"])  # (the proposer never saw a development or test example)
    prompt = choice.scores.results["samples"]["sst2"][0]["arguments"][0][0]
    assert (choice.best.instruction or "Review:") in prompt


def test_a_model_the_user_names_proposes_the_instructions_instead_of_the_model_under_test(tiny, monkeypatch):
    """method.search.proposer=tiny: the named model config is loaded (as a job loads its model) and
    proposes; the claim's search space says which model did."""
    from sweep.pipeline.plan import plan_of
    from sweep.pipeline.score import eval_tasks
    from sweep.scoring.evaluate import make_lm
    from sweep.training.models import named_model

    cfg = compose("model=tiny", "method=strongest_baseline", "method.search.template=[plain]",
                  "method.search.num_fewshot=[0]", "method.search.calibrate=[false]", "method.search.instructions=1",
                  "method.search.proposer=tiny", "data.dev_size=8", "method.search.n_startup_steps=4")
    proposer = named_model(cfg.method.search.proposer, cfg.paths.cache, cfg.seed)
    assert proposer[0].config.num_hidden_layers == 2  # (conf/model/tiny.yaml's model)
    asked = []
    monkeypatch.setattr(instructions, "propose", lambda model, *_: asked.append(model) or ["Say the review's mood."])
    under_test = make_lm(*tiny, batch_size=8)
    search = baselines.Search(cfg.method.search, plan_of(cfg).prompting_at, 8, 4, True, proposer=lambda: proposer)
    choice = baselines.strongest(search, under_test, lambda t: eval_tasks(cfg, t))
    assert asked == [proposer[0]] and asked[0] is not under_test.model
    assert "instructions: the template's own and 1 searched, proposed by tiny" in choice.space
