"""The leakage audit on constructed cases (sweep/scoring/leakage.py)."""

from sweep.scoring.leakage import audit, lcs, rouge_l_words, words

TRAINING = [
    "the film is a sprawling and ambitious portrait of a family that falls apart over three long summers by the sea",
    "a quiet little gem",
    "every scene of this thriller drags its feet while the cast looks for the exit sign in vain",
    "an utterly charming comedy about two sisters who open a bakery in a small town",
]


def test_a_planted_leak_is_flagged_and_a_clean_example_is_not():
    test = [
        # 13 words of the first training document, inside other words: an n-gram leak
        "critics agree: a sprawling and ambitious portrait of a family that falls apart over three long summers!",
        "A quiet little gem.",  # short, and equal to a training document once normalised
        # the third training document with every fourth word changed: no 8 words in a row shared, ROUGE-L high
        "every scene of that thriller drags its toes while the cast looks at the exit sign in vain",
        "a dazzling documentary about deep sea divers",  # unrelated
        "Open a bakery!",  # short and inside a training document: a phrase of it
        "what a quiet little gem of a movie",  # holds a whole training document (of 4 words: too short to count)
        "frankly , an utterly charming comedy about two sisters : a delight",  # 7 words of one, not all of it
    ]
    flags = {f.doc_id: f for f in audit(test, TRAINING)}
    assert set(flags) == {0, 1, 2, 4}
    assert flags[0].kind == "ngram" and flags[0].score == 13 and flags[0].training == TRAINING[0]
    assert flags[1].kind == "containment" and flags[1].training == TRAINING[1]  # (equal: inside, both ways)
    assert flags[2].kind == "rouge_l" and flags[2].score >= 0.8 and flags[2].training == TRAINING[2]
    assert flags[4].kind == "containment" and flags[4].score == 3 and flags[4].training == TRAINING[3]


def test_a_training_phrase_inside_a_test_sentence_is_flagged_both_ways():
    """SST-2's case: training texts are phrases, test texts sentences."""
    phrases = ["an utterly charming comedy about two sisters", "the cast"]
    flags = audit(["frankly , an utterly charming comedy about two sisters : a delight", "the cast is fine"], phrases)
    assert [(f.doc_id, f.kind, f.score, f.training) for f in flags] == [(0, "contains", 7.0, phrases[0])]


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    assert lcs(tuple("abcbdab"), tuple("bdcaba")) == 4
    a, b = words("the cat sat on the mat"), words("the cat lay on a mat")
    assert rouge_l_words(a, b) == 2 * 4 / (6 + 6)  # the, cat, on, mat
    assert rouge_l_words(a, words("dogs bark")) == 0.0


def _planted(tmp_path):
    """A data folder whose SST-2 train split holds the first test sentence (a planted leak) among
    clean phrases."""
    import json

    from tests.conftest import ROOT

    folder = tmp_path / "data" / "sst2"
    folder.mkdir(parents=True)
    test = [json.loads(line) for line in (ROOT / "data/sst2/validation.jsonl").read_text().splitlines()[:6]]
    train = [json.loads(line) for line in (ROOT / "data/sst2/train.jsonl").read_text().splitlines()[:20]]
    train[7] = dict(test[0], idx=-1)
    for name, rows in (("train", train), ("dev", train[:4]), ("validation", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "data", test


def test_a_planted_leak_is_found_in_what_the_adapter_trained_on_and_in_a_baselines_demonstrations(tmp_path):
    """Each arm is audited on what it saw (sweep/pipeline/score.py: seen_material): the adapter's training
    rows, the baseline's demonstrations; a zero-shot prompt saw nothing."""
    from types import SimpleNamespace

    from sweep.pipeline.build import load_project_tasks
    from sweep.pipeline.plan import plan_of
    from sweep.pipeline.score import seen_material
    from sweep.scoring.leakage import audit_task
    from tests.conftest import compose

    data, test = _planted(tmp_path)
    common = ("model=tiny", f"paths.data={data}", "data.dev_size=2", "data.max_train_samples=null", "eval.limit=6")
    cache = tmp_path / "cache"
    adapter = compose(*common)
    tasks = load_project_tasks(adapter)[1]
    slices = {"sst2": [0, 1]}
    material = seen_material(adapter, plan_of(adapter), None, tasks, slices, None, None)["sst2"]
    flags = audit_task(tasks["sst2"], material, cache)
    assert [(f.doc_id, f.kind) for f in flags] == [(0, "containment")] and flags[0].test.startswith(test[0]["sentence"])
    shown = SimpleNamespace(demonstrations=[{"sst2": [tasks["sst2"].dataset["train"][7]]}])
    few_shot = compose(*common, "method=few_shot", "eval.num_fewshot=1")
    material = seen_material(few_shot, plan_of(few_shot), None, tasks, slices, None, shown)["sst2"]
    assert [f.doc_id for f in audit_task(tasks["sst2"], material, cache)] == [0]
    zero_shot = compose(*common, "method=zero_shot")
    assert seen_material(zero_shot, plan_of(zero_shot), None, tasks, slices, None, SimpleNamespace(demonstrations=[]))["sst2"] == []
