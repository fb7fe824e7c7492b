"""The leakage audit: test examples that overlap what either arm could have learned from.

A test example is flagged when it shares an n-gram of normalised words with a training document, as
in GPT-3's and lm-eval's decontamination: its 13-grams, or the whole example when it is shorter (from
MIN_NGRAM words; a shorter one only when it equals a training document); and, up to ROUGE_WORDS
words, as a near-duplicate when its ROUGE-L F1 with a training document is at least ROUGE_L,
computed for the documents that share most of its uncommon words (an inverted index: all pairs of
SST-2's 67k training phrases and its test sentences would take hours).

What either arm could have learned from is one set for both, so that their clean subsets are the
same examples: the trained task's training split, each scored task's training and few-shot splits
(the demonstrations' pool), and generated tasks mixed into training. lm-eval's decontamination
needs an n-gram index of the pretraining corpus built by hand and is never applied to fine-tuning
data; this is that check on the data a sweep controls, a few seconds per task (cached by content).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from sweep.data.examples import read_generated
from sweep.runtime.files import sha256

NGRAM = 13         # GPT-3 / lm-eval decontamination
MIN_NGRAM = 8      # a test example shorter than this is flagged only when it equals a training document
ROUGE_L = 0.8      # near-duplicate: ROUGE-L F1 at least this
COMMON = 0.01      # words in more than this share of training documents do not pick candidates
CANDIDATES = 20    # training documents (most shared uncommon words) compared with a test example by ROUGE-L
ROUGE_WORDS = 64   # longer test examples are checked by n-grams alone (a near-copy of one shares a 13-gram;
                   # ROUGE-L's quadratic cost on HH-RLHF's 300-word dialogues would take minutes)
WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> tuple[str, ...]:
    """Lower-case words without punctuation (as lm-eval's decontamination normalises)."""
    return tuple(WORD.findall(text.lower()))


def doc_text(doc: dict) -> str:
    """A document's text: its string fields, in order (labels and ids are not text)."""
    return " ".join(v for v in doc.values() if isinstance(v, str))


@dataclass(frozen=True)
class Flag:
    doc_id: int      # the test example (lm-eval's doc_id: its index among the task's test documents)
    kind: str        # "ngram" or "rouge_l"
    score: float     # words of the shared n-gram, or the ROUGE-L F1
    test: str
    training: str


def lcs(a: tuple, b: tuple) -> int:
    """Length of the longest common subsequence of two word sequences."""
    row = [0] * (len(b) + 1)
    for x in a:
        previous = 0
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], previous + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(test: tuple, training: tuple) -> float:
    common = lcs(test, training)
    return 0.0 if common == 0 else 2 * common / (len(test) + len(training))


def audit(test_docs: list[str], training_docs: list[str]) -> list[Flag]:
    """Every test document (by index) that overlaps a training document, with its closest one."""
    train = [words(t) for t in training_docs]
    whole = {w: i for i, w in enumerate(train) if w}
    prefixes = collections.defaultdict(set)  # every MIN_NGRAM-gram of the training documents -> documents
    for i, w in enumerate(train):
        for k in range(len(w) - MIN_NGRAM + 1):
            prefixes[w[k:k + MIN_NGRAM]].add(i)
    joined = [f" {' '.join(w)} " for w in train]
    holders = collections.Counter(word for w in train for word in set(w))
    rare = {word for word, n in holders.items() if n <= max(1, COMMON * len(train))}
    index = collections.defaultdict(list)
    for i, w in enumerate(train):
        for word in set(w) & rare:
            index[word].append(i)
    flags = []
    for doc_id, text in enumerate(test_docs):
        w = words(text)
        hit = ngram_hit(w, whole, prefixes, joined)
        if hit is not None:
            flags.append(Flag(doc_id, "ngram", float(min(NGRAM, len(w))), text, training_docs[hit]))
            continue
        near = nearest(w, train, index, rare) if len(w) <= ROUGE_WORDS else None
        if near is not None and near[1] >= ROUGE_L:
            flags.append(Flag(doc_id, "rouge_l", round(near[1], 4), text, training_docs[near[0]]))
    return flags


def ngram_hit(w: tuple, whole: dict, prefixes: dict, joined: list[str]) -> int | None:
    """A training document holding one of the test example's n-grams (or equal to it, when short)."""
    if len(w) < MIN_NGRAM:
        return whole.get(w)
    n = min(NGRAM, len(w))
    for k in range(len(w) - n + 1):
        gram = f" {' '.join(w[k:k + n])} "
        for i in prefixes.get(w[k:k + MIN_NGRAM], ()):
            if gram in joined[i]:
                return i
    return None


def nearest(w: tuple, train: list[tuple], index: dict, rare: set) -> tuple[int, float] | None:
    """(training document, ROUGE-L F1) of the closest among those sharing most of its uncommon words."""
    mine = set(w) & rare
    if not mine:
        return None
    shared = collections.Counter(i for word in mine for i in index[word])
    best = None
    for i, n in shared.most_common(CANDIDATES):
        if n < len(mine) / 2:
            break
        score = rouge_l(w, train[i])
        if best is None or score > best[1]:
            best = (i, score)
    return best


def training_material(task, trained=None, generated: list[dict] = ()) -> list[str]:
    """What either arm could have learned from for `task` (see the module docstring): its training and
    few-shot splits, the trained task's training split, the generated tasks."""
    docs = list(task.training_docs()) if task.has_training_docs() else []
    if task.config.fewshot_split and task.config.fewshot_split != task.config.training_split:
        docs += list(task.fewshot_docs())
    if trained is not None and trained is not task and trained.has_training_docs():
        docs += list(trained.training_docs())
    return list(dict.fromkeys([*map(doc_text, docs), *map(doc_text, generated)]))


def audit_task(task, trained, generated: Path | None, training_sources: list[Path], cache: Path) -> list[Flag]:
    """`audit` of the task's test documents (lm-eval's order: their doc_ids) against its training
    material, kept under `cache` by the test texts, the sha256 of the files the training material comes
    from (`training_sources`) and the settings (a test file whose labels alone changed hits the cache);
    `generated`: the generated tasks' file, read only when the audit is not cached."""
    test = [doc_text(d) for d in task.eval_docs]
    key = hashlib.sha256(json.dumps([task.config.task, test, sorted(sha256(f) for f in training_sources), NGRAM,
                                     MIN_NGRAM, ROUGE_L, COMMON, CANDIDATES, ROUGE_WORDS]).encode()).hexdigest()[:24]
    path = Path(cache) / f"{key}.json"
    if path.is_file():
        return [Flag(**f) for f in json.loads(path.read_text())]
    flags = audit(test, training_material(task, trained, read_generated(generated) if generated else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([asdict(f) for f in flags]))
    tmp.replace(path)
    return flags
