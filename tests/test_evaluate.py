"""Scoring: task lookup with helpful errors, few-shot pool checks, metric naming."""

import pytest

from sweep.config import ConfigError
from sweep.pipeline.build import load_project_tasks
from sweep.scoring.evaluate import Prompting, make_lm, score
from sweep.scoring.registry import check_fewshot_pool
from sweep.scoring.results import flatten_metrics
from tests.conftest import compose


def test_unknown_task_names_close_matches_and_the_projects_tasks():
    with pytest.raises(ConfigError) as e:
        load_project_tasks(compose("method=zero_shot", "eval.tasks=[sst3]"))
    msg = str(e.value)
    assert "unknown lm-eval task 'sst3'" in msg and "did you mean: sst2" in msg
    assert "the project's tasks are: hh_rlhf, rte, self_instruct, sst2, user_oriented" in msg


def test_few_shot_k_larger_than_the_pool():
    _, tasks = load_project_tasks(compose("data=self_instruct", "method=zero_shot"))
    check_fewshot_pool(tasks, 150)
    with pytest.raises(ConfigError, match=r"eval.num_fewshot=151 is larger than task self_instruct's few-shot pool "
                                          r"\(150 examples in split 'train'\); use eval.num_fewshot<=150"):
        check_fewshot_pool(tasks, 151)


def test_flatten_metrics_names():
    flat = flatten_metrics({"sst2": {"alias": "sst2", "acc,none": 0.9, "acc_stderr,none": 0.01,
                                     "sample_len": 10, "exact_match,strict": 0.5}})
    assert flat == {"sst2/acc": 0.9, "sst2/acc_stderr": 0.01, "sst2/n_samples": 10.0,
                    "sst2/exact_match_strict": 0.5}


def test_scoring_in_process_zero_and_few_shot(tiny, monkeypatch):
    """Zero- and few-shot passes in one process; lm-eval's description of the environment in each
    result, gathered once (before: at every pass, half a second each)."""
    from lm_eval.loggers import utils as lm_eval_loggers

    from sweep.scoring.environment_once import environment

    gathered = []
    monkeypatch.setattr(lm_eval_loggers, "add_env_info",
                        lambda s, _real=lm_eval_loggers.add_env_info: gathered.append(1) or _real(s))
    environment.cache_clear()
    cfg = compose("model=tiny", "method=zero_shot")
    tm, tasks = load_project_tasks(cfg)
    lm = make_lm(tiny[0], tiny[1], batch_size=8)
    zero = score(lm, tm, tasks, Prompting(num_fewshot=0), limit=6, log_samples=True)
    assert zero.metrics["sst2/n_samples"] == 6 and 0 <= zero.metrics["sst2/acc"] <= 1
    assert len(zero.results["samples"]["sst2"]) == 6
    few = score(lm, tm, load_project_tasks(cfg)[1], Prompting(num_fewshot=2), limit=6, log_samples=True)
    prompt = few.results["samples"]["sst2"][0]["arguments"][0][0]
    assert prompt.count("Answer:") == 3  # two examples and the question
    assert len(gathered) == 1 and zero.results["pretty_env_info"] == few.results["pretty_env_info"]
    described = {}
    lm_eval_loggers.add_env_info(described)
    assert described.keys() <= zero.results.keys() and described["transformers_version"] == \
        few.results["transformers_version"]


def test_task_templates_render_as_lm_eval_renders_them_compiling_each_once(monkeypatch):
    """Every document of every project task renders to lm-eval's own text (its filters, its
    StrictUndefined), and a task's template is compiled once, not once per document and field."""
    import jinja2
    from lm_eval.utils import env

    from sweep.data import templates

    def lm_evals(template: str, doc: dict) -> str:
        return env.from_string(template).render(**doc)

    for data in ("sst2", "rte", "hh_rlhf", "self_instruct"):
        _, tasks = load_project_tasks(compose(f"data={data}", "method=zero_shot"))
        for task in tasks.values():
            for field in ("doc_to_text", "doc_to_target", "doc_to_choice"):
                template = getattr(task.config, field)
                if isinstance(template, str) and "{{" in template:
                    for doc in list(task.eval_docs)[:20]:
                        assert templates.render_template(template, doc) == lm_evals(template, doc)
    with pytest.raises(jinja2.UndefinedError):
        templates.render_template("{{ nosuch }}", {"sentence": "x"})
    assert templates.render_template("{{ s | regex_replace('a+', 'b') }}", {"s": "caat"}) == "cbt"

    compiled = []
    monkeypatch.setattr(env, "from_string", lambda t, _f=env.from_string: compiled.append(t) or _f(t))
    templates.compiled.cache_clear()
    _, tasks = load_project_tasks(compose("method=zero_shot"))
    [task] = tasks.values()
    docs = list(task.eval_docs)[:50]
    texts = [task.doc_to_text(d) for d in docs]
    assert len(set(texts)) > 1 and len(compiled) <= 1, len(compiled)  # (before: once per document)
