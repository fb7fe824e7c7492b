"""The bundled splits keep test, development and training examples apart by source: this fails if a
data file is edited, or rebuilt, in a way that breaks the rules (scripts/build_splits.py)."""

import hashlib
import json
import re

import pytest

from sweep.data.grouping import PhraseIndex, full_sentences, inside, related, spans, words
from sweep.scoring.leakage import audit, doc_text
from tests.conftest import ROOT

DATA = ROOT / "data"


def rows(path: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / path).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_words_drop_case_and_punctuation_and_containment_is_by_whole_words():
    assert words("It 's a -- GOOD film .") == ("it", "s", "a", "good", "film")
    assert inside(words("good film"), words("a good film ,")) and not inside(words("goo"), words("good film"))
    assert related(words("A good film"), words("good film")) and not related(words("good"), words("bad film"))
    assert len(list(spans(("a", "b", "c")))) == 6
    texts = [words(t) for t in ("a good film", "good film", "film", "a bad day", "the end")]
    assert full_sentences(texts) == [0, 3, 4]
    index = PhraseIndex(texts)
    assert index.inside_of(words("a good film")) == {0, 1, 2} and index.containing(words("good")) == {0, 1}


@pytest.fixture(scope="module")
def sst2():
    return {role: rows(f"sst2/{role}.jsonl") for role in ("train", "dev", "validation")}


def test_no_sst2_training_phrase_equals_is_inside_or_contains_a_test_or_development_sentence(sst2):
    index = PhraseIndex(words(r["sentence"]) for r in sst2["train"])
    for role in ("dev", "validation"):
        hits = [r["idx"] for r in sst2[role] if index.related_to(words(r["sentence"]))]
        assert not hits, f"{role}: {len(hits)} examples share a source with training phrases, e.g. GLUE row {hits[:3]}"


def test_sst2_test_and_development_examples_are_distinct_full_sentences_of_each_other(sst2):
    held = [words(r["sentence"]) for r in sst2["dev"] + sst2["validation"]]
    assert full_sentences(held) == list(range(len(held)))  # (none equal to or inside another)
    assert len(sst2["validation"]) == 1000 and len(sst2["dev"]) == 600 and len(sst2["train"]) > 40000


def test_rte_premises_sit_on_one_side_only_and_the_audit_finds_no_overlap():
    split = {role: rows(f"rte/{role}.jsonl") for role in ("train", "dev", "validation")}
    premises = {role: {words(r["sentence1"]) for r in split[role]} for role in split}
    assert not premises["train"] & premises["validation"] and not premises["train"] & premises["dev"]
    assert not premises["dev"] & premises["validation"]
    train = [doc_text(r) for r in split["train"]]
    for role in ("dev", "validation"):
        assert audit([doc_text(r) for r in split[role]], train) == [], role


def test_hh_rlhf_dialogues_and_self_instruct_tasks_sit_on_one_side_only():
    def first_turn(prompt):
        return prompt.split("\n\nAssistant:")[0].strip()
    hh = {f: {first_turn(r["prompt"]) for r in rows(f"hh_rlhf_helpful/{f}.jsonl")} for f in ("train", "validation")}
    assert not hh["train"] & hh["validation"]
    seed = {f: {r["instruction"].strip().lower() for r in rows(f"self_instruct/{f}.jsonl")} for f in ("train", "validation")}
    assert not seed["train"] & seed["validation"]


def test_the_readme_records_each_bundled_files_hash():
    listed = dict(reversed(line.split()) for line in re.findall(r"^[0-9a-f]{64}  \S+$", (DATA / "README.md").read_text(), re.M))
    files = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.jsonl"))
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name
