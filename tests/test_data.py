"""Training data: rendered by the lm-eval task itself, answer-only loss, strict JSONL reading."""

import json

import pytest

from sweep.config import ConfigError
from sweep.data.examples import (
    IGNORE_INDEX,
    data_files,
    render_pair,
    tokenize_pairs,
    training_pairs,
)
from sweep.pipeline.build import load_project_tasks
from sweep.scoring.evaluate import make_lm
from tests.conftest import ROOT, compose


@pytest.fixture(scope="module")
def tasks():
    cfg = compose("model=tiny", "eval.tasks=[sst2,rte,self_instruct]")
    return load_project_tasks(cfg)[1]


@pytest.mark.parametrize("template", ["default", "plain", "chat"])
@pytest.mark.parametrize("name", ["sst2", "rte"])
def test_training_pairs_are_lm_evals_own_requests(tiny, name, template):
    """What we train on is exactly the (context, continuation) lm-eval scores for the gold answer,
    with every prompt template (the chat one through the model's chat template)."""
    cfg = compose("model=tiny", f"eval.tasks=[{name}]", f"data={name}", f"eval.template={template}")
    task = load_project_tasks(cfg)[1][name]
    chat = template == "chat"
    lm = make_lm(*tiny, batch_size=4)
    chat_template = lm.apply_chat_template if chat else None
    task.build_all_requests(limit=5, rank=0, world_size=1, apply_chat_template=chat, chat_template=chat_template)
    gold = [i for i in task.instances if i.idx == task.doc_to_target(i.doc)]  # only the gold choice is trained on
    assert len(gold) == 5
    for instance in gold:
        assert render_pair(task, instance.doc, chat_template) == tuple(instance.arguments)
    assert gold[0].arguments[0].startswith("<|im_start|>system") == chat


def test_generation_pairs_use_the_reference_answer(tasks):
    task = tasks["self_instruct"]
    doc = task.dataset["validation"][0]
    context, answer = render_pair(task, doc)
    assert context.startswith("Instruction: ") and context.endswith("Response:")
    assert answer == " " + doc["output"].strip()


@pytest.mark.parametrize("name, field", [("self_instruct", "output"), ("hh_rlhf", "chosen")])
@pytest.mark.parametrize("text", ['["a","b"]', "[-4, 2, 5, 10, 92, 101]"])
def test_a_reference_that_looks_like_a_list_is_trained_as_written(name, field, text):
    """lm-eval parses a template target like `["a","b"]` into a list, whose repr (`['a', 'b']`)
    training would learn; the tasks' targets are functions that keep the file's text."""
    task = load_project_tasks(compose("model=tiny", f"eval.tasks=[{name}]", f"data={name}"))[1][name]
    doc = dict(task.dataset["validation"][0]) | {field: text}
    assert task.doc_to_target(doc) == text
    assert render_pair(task, doc)[1] == " " + text


def test_training_pairs_are_a_seeded_subset(tasks):
    a = training_pairs(tasks["sst2"], "train", 50, seed=1)
    assert a == training_pairs(tasks["sst2"], "train", 50, seed=1)
    assert a != training_pairs(tasks["sst2"], "train", 50, seed=2)
    assert len(a) == 50 and len(training_pairs(tasks["rte"], "train", None, seed=0)) == 1840


def test_unknown_train_split(tasks):
    with pytest.raises(ConfigError, match="data.train_split='nosuch'.*has splits train, dev, validation"):
        training_pairs(tasks["sst2"], "nosuch", None, 0)
    for split, role in (("validation", "test"), ("dev", "development")):
        with pytest.raises(ConfigError, match=f"data.train_split={split}: that is task sst2's {role} split"):
            training_pairs(tasks["sst2"], split, None, 0)


def test_prompt_tokens_are_masked_and_answer_tokens_kept(tiny, tasks):
    lm = make_lm(tiny[0], tiny[1], batch_size=1)
    pairs = training_pairs(tasks["sst2"], "train", 20, seed=0)
    for (context, answer), row in zip(pairs, tokenize_pairs(pairs, lm._encode_pair, 512)):
        ctx, ans = lm._encode_pair(context, answer)
        assert row["input_ids"] == ctx + ans
        assert row["labels"] == [IGNORE_INDEX] * len(ctx) + ans
        assert tiny[1].decode(ans).strip() in ("positive", "negative")


def test_long_prompts_are_cut_from_the_left_and_eos_appended(tiny):
    lm = make_lm(tiny[0], tiny[1], batch_size=1)
    [row] = tokenize_pairs([("word " * 100 + "end:", " yes")], lm._encode_pair, 16, eos_id=7)
    assert len(row["input_ids"]) == 16
    assert row["input_ids"][-1] == 7 and row["labels"][-1] == 7
    assert row["labels"][:-2] == [IGNORE_INDEX] * 14


def test_data_files_are_the_projects(tasks):
    assert data_files(tasks["sst2"]) == [ROOT / "data/sst2/train.jsonl", ROOT / "data/sst2/dev.jsonl",
                                         ROOT / "data/sst2/validation.jsonl"]


def _task_dir(tmp_path, lines: list[str] | None):
    """A copy of tasks/sst2.yaml reading a validation file with the given lines."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "data").mkdir()
    yaml = (ROOT / "tasks/sst2.yaml").read_text().replace("task: sst2", "task: sst2_copy")
    yaml = yaml.replace("sst2/validation.jsonl", "bad.jsonl").replace("sst2/train.jsonl", "bad.jsonl")
    yaml = yaml.replace("sst2/dev.jsonl", "bad.jsonl")
    (tmp_path / "tasks/sst2_copy.yaml").write_text(yaml)
    (tmp_path / "tasks/local_data.py").write_text((ROOT / "tasks/local_data.py").read_text())
    if lines is not None:
        (tmp_path / "data/bad.jsonl").write_text("\n".join(lines) + "\n")
    return compose(f"paths.tasks={tmp_path}/tasks", f"paths.data={tmp_path}/data", "eval.tasks=[sst2_copy]",
                   "method=zero_shot")


@pytest.mark.parametrize("lines,needle", [
    (None, "data file not found: "),
    ([], "bad.jsonl: the file holds no examples"),
    ([json.dumps({"sentence": "ok", "label": 1}), "{not json"], "bad.jsonl:2: not valid JSON"),
    ([json.dumps({"sentence": "ok", "label": 1}), json.dumps({"sentence": "no label"})],
     "bad.jsonl:2: missing field 'label'"),
])
def test_bad_data_files_fail_with_file_and_line(tmp_path, lines, needle):
    cfg = _task_dir(tmp_path, lines)
    with pytest.raises(ConfigError) as e:
        load_project_tasks(cfg)
    assert needle in str(e.value)
