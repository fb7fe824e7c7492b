"""Self-Instruct generation (generate_instructions.py): the loop with a scripted model
(classification tasks get output-first instances; a killed run resumes to what an uninterrupted one
writes), the real sampler on the tiny model, and generated data mixed into training."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from sweep.config import ConfigError
from sweep.data.examples import (
    IGNORE_INDEX,
    TASKS_FILE,
    build_train_dataset,
    mixed_docs,
    read_generated,
    training_pairs,
)
from sweep.pipeline.generate import generate_rounds
from sweep.scoring.evaluate import make_lm
from sweep.self_instruct.rounds import generate_round
from sweep.self_instruct.sampling import Completion, ModelSampler, classify
from sweep.self_instruct.state import ROUNDS_FILE, RUN_FILE, State, load_seed_tasks
from sweep.vocabulary import GENERATED_DIR, GENERATED_SHA_TAG
from tests import forked
from tests.conftest import ROOT, compose

WORDS = ("apple river budget planet candle garden violin ocean ladder pepper silver thunder meadow rocket "
         "pillow compass harbor lantern marble orchard puzzle saddle tunnel walnut anchor basket cactus "
         "dragon engine falcon glacier hammer island jacket kettle lemon magnet needle parrot quartz").split()


def generation_config(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="generate_instructions", overrides=list(overrides))


class ScriptedSampler:
    """Stands in for the model: what it writes depends only on the prompt and the seed, as with a
    seeded sampler. Lists of new instructions (one a classification task each time), Yes for
    instructions that say "Classify", and an instance in the form the prompt asks for."""

    def __init__(self):
        self.tokens, self.instance_prompts = 0, []

    def complete(self, prompts, max_new_tokens, seed, stop):
        out = []
        for prompt in prompts:
            rng = random.Random(f"{prompt}|{seed}")
            if prompt.startswith("Come up with"):
                text = (f" Describe how a {' '.join(rng.sample(WORDS, 4))} could help the team today."
                        f"\n10. Classify the {rng.choice(WORDS)} review as positive or negative.")
                out.append(Completion(text, truncated=False))
            else:
                self.instance_prompts.append(prompt)
                text = (f" positive\nInput: I loved the {rng.choice(WORDS)}.\n\nTask: next" if prompt.endswith("Class label:")
                        else f" The {rng.choice(WORDS)} report\nOutput: A short {rng.choice(WORDS)} summary.")
                out.append(Completion(text, truncated=False))
            self.tokens += 10
        return out

    def margins(self, prompts, first, second):
        """Leans to No (-1) for every task, and less (+1) for those that say "Classify"."""
        return [1.0 if "Classify" in p.rsplit("Task:", 1)[1] else -1.0 for p in prompts]


@pytest.fixture(scope="module")
def seed_tasks():
    return load_seed_tasks(ROOT / "data/self_instruct/train.jsonl", 8)


def test_classification_tasks_get_output_first_instances(seed_tasks):
    g = generation_config("generation.prompts_per_round=2").generation
    sampler = ScriptedSampler()
    r = generate_round(1, g, 0, sampler, seed_tasks, [])
    kinds = {t["is_classification"] for t in r.tasks}
    assert kinds == {True, False} and r.classification == sum(t["is_classification"] for t in r.tasks)
    for task in r.tasks:
        if task["is_classification"]:  # the label first, then an input that has it; the next task cut off
            assert task["output"] == "positive" and task["input"].startswith("I loved the ")
        else:
            assert task["input"].startswith("The ") and task["output"].startswith("A short ")
    asked = {p.rsplit("Task: ", 1)[1].split("\n")[0]: p for p in sampler.instance_prompts}
    for task in r.tasks:
        assert asked[task["instruction"]].endswith("Class label:" if task["is_classification"] else "Input:")
    # the second list's classification task differs from the first's by one word: filtered as similar
    assert r.candidates == 4 and r.rejected == {"similar": 1} and len(r.tasks) == 3


class LeaningSampler(ScriptedSampler):
    """A model that leans to No for everything: classification tasks only a little less."""

    def margins(self, prompts, first, second):
        return [-0.5 if "Classify" in p.rsplit("Task:", 1)[1] else -2.0 for p in prompts]


def test_calibration_finds_classification_tasks_a_model_leaning_to_no_would_miss():
    examples = [[("Sort these numbers.", False), ("Is this spam? Yes or no.", True)]] * 2
    tasks = ["Classify the review as positive or negative.", "Summarize the meeting notes."]
    assert classify(LeaningSampler(), examples, tasks, calibrate=False) == [False, False]
    # content-free tasks score -2 (they do not say "Classify"): the review is +1.5 above them, the notes 0
    assert classify(LeaningSampler(), examples, tasks, calibrate=True) == [True, False]


def run_rounds(folder, g, seed_tasks, upto=None):
    """generate_rounds into `folder` with the scripted model (up to round `upto`: a run killed there)."""
    from omegaconf import OmegaConf

    state = State.open(folder, {"test": 1})
    generate_rounds(OmegaConf.merge(g, {"rounds": upto}) if upto else g, 0, ScriptedSampler(), seed_tasks, state)
    return state


def test_a_killed_run_continues_to_what_an_uninterrupted_run_writes(tmp_path, seed_tasks):
    """The kill forced at the worst place: after a round's tasks were written, before its record
    (the commit point), with the last line cut in half. The rerun drops that round and writes it again."""
    g = generation_config("generation.rounds=3", "generation.prompts_per_round=3").generation
    whole = run_rounds(tmp_path / "whole", g, seed_tasks)
    assert len(whole.rounds) == 3 and {t["round"] for t in whole.tasks} == {1, 2, 3}

    killed = tmp_path / "killed"
    run_rounds(killed, g, seed_tasks, upto=2)
    third = [t for t in whole.tasks if t["round"] == 3]
    with (killed / TASKS_FILE).open("a") as f:
        f.write("".join(json.dumps(t) + "\n" for t in third) + json.dumps(third[0])[:20])
    resumed = run_rounds(killed, g, seed_tasks)
    assert (killed / TASKS_FILE).read_bytes() == (tmp_path / "whole" / TASKS_FILE).read_bytes()
    untimed = [{k: v for k, v in r.items() if k not in ("seconds", "tokens")} for r in resumed.rounds]
    assert untimed == [{k: v for k, v in r.items() if k not in ("seconds", "tokens")} for r in whole.rounds]


@pytest.mark.parametrize("cut", [TASKS_FILE, ROUNDS_FILE])
def test_a_line_cut_in_half_by_a_kill_is_not_appended_to(tmp_path, seed_tasks, cut):
    """Killed inside the very first write of a round (half a line, nothing whole after it): the
    next round's lines start on a line of their own."""
    g = generation_config("generation.rounds=2", "generation.prompts_per_round=2").generation
    whole = run_rounds(tmp_path / "whole", g, seed_tasks)
    killed = tmp_path / "killed"
    run_rounds(killed, g, seed_tasks, upto=1)
    with (killed / cut).open("a") as f:
        f.write('{"round": 2, "instr')
    run_rounds(killed, g, seed_tasks)
    assert (killed / TASKS_FILE).read_bytes() == (tmp_path / "whole" / TASKS_FILE).read_bytes()
    assert [r["round"] for r in State.open(killed, {"test": 1}).rounds] == [1, 2] and len(whole.rounds) == 2


def test_a_folder_continues_only_with_its_own_settings(tmp_path):
    State.open(tmp_path, {"temperature": 0.7, "seed": 0})
    State.open(tmp_path, {"temperature": 0.7, "seed": 0})
    with pytest.raises(ConfigError, match="other settings \\(temperature\\); choose another generation.output_dir"):
        State.open(tmp_path, {"temperature": 1.0, "seed": 0})


def test_the_model_sampler_is_seeded_batched_and_flags_truncation(tiny):
    sampler = ModelSampler(*tiny, temperature=0.7, top_p=0.95, batch_size=2)
    prompts = ["Come up with a series of tasks:\n1. Name a fruit.\n2.", "Task: say hi\nInput:", "Hello"]
    a = sampler.complete(prompts, 8, seed=3, stop=["\n\n"])
    assert [c.text for c in a] == [c.text for c in sampler.complete(prompts, 8, seed=3, stop=["\n\n"])]
    assert [c.text for c in a] != [c.text for c in sampler.complete(prompts, 8, seed=4, stop=["\n\n"])]
    assert all(c.truncated for c in a)  # random weights never end a line: every completion hit the limit
    assert sampler.tokens == 3 * 3 * 8 and sampler.seconds > 0
    margins = sampler.margins(prompts, "Yes", "No")
    assert len(margins) == 3 and len(set(margins)) == 3


def test_generated_documents_are_mixed_in_at_the_asked_share():
    hand = [{"instruction": f"hand {i}", "input": "", "output": "x"} for i in range(100)]
    made = [{"instruction": f"made {i}", "input": "", "output": "y"} for i in range(30)]
    docs = mixed_docs(hand, made, 0.25, 40, seed=1)
    assert len(docs) == 40 and sum(d["instruction"].startswith("made") for d in docs) == 10
    assert docs == mixed_docs(hand, made, 0.25, 40, seed=1) and docs != mixed_docs(hand, made, 0.25, 40, seed=2)
    assert len(mixed_docs(hand, made, 0.5, None, seed=0)) == 60  # as many as the 30 generated allow
    assert all(d in made for d in mixed_docs(hand, made, 1.0, None, seed=0))
    with pytest.raises(ConfigError, match="needs 40 generated and 10 hand-written examples; there are 30 and 100"):
        mixed_docs(hand, made, 0.8, 50, seed=0)


def test_generated_data_is_read_as_text_only(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "input": "", "output": "Hi!", "extra": "dropped"}) + "\n")
    assert read_generated(path) == [{"instruction": "Say hi.", "input": "", "output": "Hi!"}]
    path.write_text(json.dumps({"instruction": "Say hi.", "input": {"$ref": "x"}, "output": "Hi!"}) + "\n")
    with pytest.raises(ConfigError, match="tasks.jsonl:1: needs text fields instruction, input, output"):
        read_generated(path)
    path.write_text("")
    with pytest.raises(ConfigError, match="holds no tasks"):
        read_generated(path)


def test_chat_template_rendering_trains_on_the_reply_alone(tiny):
    """eval.template=chat on Self-Instruct data: the prompt is the model's chat template (user
    turn, then the assistant's header); the loss covers exactly the reply and the end of turn."""
    from sweep.pipeline.build import load_project_tasks

    cfg = compose("model=tiny", "data=self_instruct", "eval.template=chat", "data.max_train_samples=5")
    task = load_project_tasks(cfg)[1]["self_instruct"]
    lm = make_lm(*tiny, batch_size=1)
    docs = list(task.dataset["train"])
    rows = build_train_dataset(task, cfg.data, lm, 2048, seed=0, chat=True)
    pairs = training_pairs(task, "train", 5, 0, lm.apply_chat_template)
    tokenizer = tiny[1]
    for row, (context, answer) in zip(rows, pairs):
        doc = next(d for d in docs if d["output"].strip() == answer)
        assert context.startswith("<|im_start|>") and context.endswith("<|im_start|>assistant\n")
        assert doc["instruction"].strip() in context
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
        assert row["labels"][:len(row["labels"]) - len(trained)] == [IGNORE_INDEX] * (len(row["labels"]) - len(trained))
        assert trained == row["input_ids"][-len(trained):]  # the trained tokens are the sequence's tail
        assert tokenizer.decode(trained) == doc["output"].strip() + tokenizer.eos_token


def test_generated_data_joins_training_with_its_hash_and_dataset(tmp_path, tiny):
    from sweep.pipeline.build import build

    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Write the word number {i}.", "input": "",
                                        "output": f"word {i}"}) + "\n" for i in range(8)))
    cfg = compose("model=tiny", "data=self_instruct_generated", f"data.generated={path}", "data.max_train_samples=8",
                  "eval.limit=2")
    built = build(cfg)
    texts = [tiny[1].decode(row["input_ids"]) for row in built.train_dataset]
    assert len(texts) == 8 and all("Write the word number" in t for t in texts)
    assert path in built.files
    assert ("self_instruct_generated", path, "training") in built.datasets


@pytest.mark.e2e
def test_generate_with_smollm2_then_train_on_the_generated_tasks(tmp_path, tracking):
    """One short round with the real model (a random-weight model writes no instruction that
    passes the paper's filters), recorded to MLflow; then SFT of the tiny model on the run's
    tasks, named by its run id; a changed artifact in the store is refused."""
    import mlflow

    from sweep.data.examples import generated_file
    from sweep.runtime.files import sha256
    from tests.conftest import TINY, clean_env, run_sweep, runs_of

    out = tmp_path / "generated"
    p = forked.run(["generate_instructions.py", "generation.rounds=1", "generation.prompts_per_round=2",
                    "generation.max_new_tokens=64", "generation.instance_max_new_tokens=48",
                    f"generation.output_dir={out}", *tracking, f"hydra.run.dir={tmp_path}/out"], ROOT, clean_env(),
                   timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=tracking[0].split("=", 1)[1])
    run = client.get_run(run_id)
    tasks = read_generated(out / TASKS_FILE)
    assert run.info.status == "FINISHED" and tasks
    assert run.data.metrics["pool_size"] == run.data.metrics["total/accepted"] == len(tasks)
    assert run.data.metrics["candidates"] >= len(tasks) and 0 < run.data.metrics["acceptance_rate"] <= 1
    assert run.data.metrics["total/instructions_per_minute"] > 0
    assert run.data.params["generation.temperature"] == "0.7" and run.data.tags[GENERATED_SHA_TAG] == sha256(out / TASKS_FILE)
    artifacts = {a.path for a in client.list_artifacts(run_id, GENERATED_DIR)}
    assert artifacts == {f"{GENERATED_DIR}/{f}" for f in (TASKS_FILE, ROUNDS_FILE, "data_card.md", "similarity.png")}
    [generated] = [d for d in run.inputs.dataset_inputs if d.dataset.name == "self_instruct_generated"]
    assert generated.dataset.digest and json.loads(generated.dataset.profile)["num_rows"] == len(tasks)

    p = run_sweep(*TINY, *tracking, "data=self_instruct_generated", f"data.generated={run_id}", "eval.limit=2")
    assert p.returncode == 0, p.stderr[-3000:]
    [sft] = runs_of(tracking, "sft-sweep").to_dict("records")
    assert sft["status"] == "FINISHED" and sft["params.data.generated"] == run_id
    used = json.loads(Path(client.download_artifacts(sft["run_id"], "data_sha256.json", str(tmp_path))).read_text())
    assert run.data.tags[GENERATED_SHA_TAG] in used.values()
    replies = client.load_table(sft["experiment_id"], "sample_replies.json", run_ids=[sft["run_id"]])
    assert len(replies) == 2 and set(replies["task"]) == {"self_instruct"}
    assert {"instruction", "input", "reference", "reply", "rougeL"} <= set(replies.columns)

    stored = next((tmp_path / "artifacts").rglob(f"{run_id}/artifacts/{GENERATED_DIR}/{TASKS_FILE}"))
    stored.write_text(stored.read_text().replace(tasks[0]["output"], "I was changed", 1))
    data = compose("data=self_instruct_generated", f"data.generated={run_id}").data
    with pytest.raises(ConfigError, match="does not match the sha256 it recorded"):
        generated_file(data, tracking[0].split("=", 1)[1], tmp_path / "cache")


@pytest.mark.e2e
def test_the_experiment_reports_score_by_source_and_size_of_instruction_data(tmp_path, tracking):
    """experiment=instruction_data on the tiny model (sizes and sources cut down): the report's
    table has one row per source and size with its paired difference to the base model, and the
    score-vs-size figure."""
    from analysis import report
    from tests.conftest import TINY, run_sweep, runs_of

    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Write the word number {i}.", "input": "",
                                        "output": f"word {i}"}) + "\n" for i in range(16)))
    small = [*TINY, *tracking, f"data.generated={path}", "eval.tasks=[self_instruct]", "train.max_steps=2",
             "eval.limit=4", "data.dev_size=0"]  # (as the experiment: it chooses nothing)
    p = run_sweep("-m", "experiment=instruction_data", *small, "method=lora", "data.mix=0,1", "data.max_train_samples=4,8")
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_sweep("experiment=instruction_data", *small, "method=zero_shot")  # the base model
    assert p.returncode == 0, p.stderr[-3000:]
    runs = runs_of(tracking, "instruction_data")
    assert len(runs) == 5 and set(runs["status"]) == {"FINISHED"}
    rep, _ = report.build_report("instruction_data", None)
    [(_, table, _)] = [t for t in rep.tables if t[0] == "Instruction data: source and size"]
    assert list(zip(table["source"], table["training instructions"])) == [
        ("base model, zero-shot", 0), ("hand-written", 4), ("hand-written", 8), ("generated", 4), ("generated", 8)]
    assert all(v.startswith(("+", "-")) and "[" in v for v in table["self_instruct/rougeL vs base"][1:])  # (the base: "-")
    assert "self_instruct/win_rate vs base" not in table  # not judged: no win-rate column
    assert "self_instruct/rougeL vs training instructions" in rep.figures


def instruction_run(run_id: str, method: str, mix: float | None, n: int | None, rouge: list[float],
                    judged: tuple[float, float, float, float] | None = None) -> dict:
    """A finished run as the report reads it; `judged`: (win rate, its interval, reply tokens)."""
    row = {"run_id": run_id, "status": "FINISHED", "tags.method": method, "tags.mlflow.runName": run_id,
           "tags.model": "smollm2", "params.eval.limit": "4", "params.eval.template": "chat",
           "params.data.mix": None if mix is None else str(mix), "metrics.train_examples": n,
           "metrics.self_instruct/rougeL": sum(rouge) / len(rouge), "metrics.self_instruct/rougeL_stderr": 0.01}
    if judged:
        row |= dict(zip([f"metrics.self_instruct/{m}" for m in ("win_rate", "win_rate_ci_low", "win_rate_ci_high",
                                                                 "reply_tokens")], judged))
    return row


def test_the_instruction_data_table_puts_rouge_and_the_judges_win_rate_side_by_side(monkeypatch):
    """One row for the base model, then one per source and size (by generated share): each task's
    ROUGE-L ± se, its difference with the base model paired per example, the win rate against the
    base model's replies with its interval and the reply length; the judge's columns only when judged."""
    from analysis import instruction_data, stats

    rouge = {"base": [0.1, 0.2, 0.3, 0.4], "hand": [0.5, 0.6, 0.7, 0.8], "gen": [0.1, 0.2, 0.3, 0.5]}
    monkeypatch.setattr(stats, "logged_samples", lambda run_id: {"self_instruct": [
        {"doc_id": i, "rougeL": v} for i, v in enumerate(rouge.get(run_id, []))]})
    runs = [instruction_run("gen", "lora", 1.0, 40, rouge["gen"], (0.7, 0.52, 0.88, 28.9)),
            instruction_run("hand", "lora", 0.0, 40, rouge["hand"], (0.58, 0.4, 0.76, 56.4)),
            instruction_run("base", "zero_shot", None, None, rouge["base"], (None, None, None, 82.7))]
    table = instruction_data.instruction_data_table(pd.DataFrame(runs))
    assert table.to_dict("records") == [
        {"source": "base model, zero-shot", "training instructions": 0, "run": "base",
         "self_instruct/rougeL": "0.250 ± 0.010", "self_instruct/rougeL vs base": "-",
         "self_instruct/win_rate vs base": "-", "self_instruct/reply_tokens": "82.7"},
        {"source": "hand-written", "training instructions": 40, "run": "hand",
         "self_instruct/rougeL": "0.650 ± 0.010", "self_instruct/rougeL vs base": "+0.400 [+0.400, +0.400]",
         "self_instruct/win_rate vs base": "0.58 [0.40, 0.76]", "self_instruct/reply_tokens": "56.4"},
        {"source": "generated", "training instructions": 40, "run": "gen",
         "self_instruct/rougeL": "0.275 ± 0.010", "self_instruct/rougeL vs base": "+0.025 [+0.000, +0.075]",
         "self_instruct/win_rate vs base": "0.70 [0.52, 0.88]", "self_instruct/reply_tokens": "28.9"}]
    figures = instruction_data.instruction_data_figures(pd.DataFrame(runs))
    assert set(figures) == {"self_instruct/rougeL vs training instructions",
                            "self_instruct/win_rate vs training instructions"}
    unjudged = instruction_data.instruction_data_table(pd.DataFrame([{**r, "metrics.self_instruct/win_rate": None,
                                                                      "metrics.self_instruct/reply_tokens": None}
                                                                     for r in runs]))
    assert list(unjudged.columns) == ["source", "training instructions", "run", "self_instruct/rougeL",
                                      "self_instruct/rougeL vs base"]
    assert instruction_data.instruction_data_table(pd.DataFrame(runs[1:])) is None  # one source at one size
    another_sweep = {**runs[1], "run_id": "hand-all", "params.eval.limit": None}  # scored on every example
    table = instruction_data.instruction_data_table(pd.DataFrame([*runs, another_sweep]))
    assert table["eval.limit"].tolist() == ["4", "4", "all", "4"]  # a column only when the limits differ


@pytest.mark.e2e
def test_the_same_command_continues_a_killed_generation_in_its_own_run(tmp_path, tracking):
    """Tiny model: a first round recorded; its run then closed as a dead process's run is closed
    (KILLED, with an error tag); the command run again with two rounds continues the folder in
    the same MLflow run, which ends FINISHED with both rounds' metrics."""
    import mlflow

    from tests.conftest import clean_env

    out = tmp_path / "generated"
    args = [sys.executable, "generate_instructions.py", "model=tiny", "generation.prompts_per_round=2",
            "generation.max_new_tokens=16", "generation.instance_max_new_tokens=8", f"generation.output_dir={out}",
            *tracking, f"hydra.run.dir={tmp_path}/out"]
    p = subprocess.run([*args, "generation.rounds=1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=clean_env())
    assert p.returncode == 0, p.stderr[-3000:]
    run_id = json.loads((out / RUN_FILE).read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=tracking[0].split("=", 1)[1])
    client.set_tag(run_id, "error", "its process is gone; closed by a later run")
    client.set_terminated(run_id, "KILLED")
    p = subprocess.run([*args, "generation.rounds=2"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=clean_env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / RUN_FILE).read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert [m.step for m in client.get_metric_history(run_id, "candidates")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_sample_replies_are_a_table_of_generation_tasks_only():
    from sweep.tracking.records import sample_replies

    generated = {"doc": {"instruction": "Say hi.", "input": ""}, "target": "Hi!", "filtered_resps": ["Hello!"],
                 "metrics": ["rougeL"], "rougeL": 0.0}
    choice = {"doc": {"sentence": "great"}, "target": 1, "filtered_resps": [(-0.1, True), (-2.0, False)],
              "metrics": ["acc"], "acc": 1.0}
    table = sample_replies({"samples": {"self_instruct": [generated] * 3, "sst2": [choice]}})
    assert table == {"task": ["self_instruct"] * 3, "instruction": ["Say hi."] * 3, "input": [""] * 3,
                     "reference": ["Hi!"] * 3, "reply": ["Hello!"] * 3, "rougeL": [0.0] * 3}
    assert sample_replies({"samples": {"sst2": [choice]}}) is None
