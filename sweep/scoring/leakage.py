"""The leakage audit: test examples that overlap what this run could have learned from.

A test example is flagged when, compared as normalised words (lower-cased, punctuation dropped):
- it lies inside a text the run saw, or is equal to one (`containment`: any length);
- a text the run saw, of at least CONTAINED_WORDS words, lies inside it (`contains`: SST-2's
  phrases are pieces of its sentences, so a test sentence holding a training phrase is flagged);
- it shares a 13-gram with one, as in GPT-3's and lm-eval's decontamination (`ngram`);
- or, up to ROUGE_WORDS words, it is a near-duplicate of one: ROUGE-L F1 at least ROUGE_L, computed for
  the texts that share most of its uncommon words (an inverted index: all pairs would take hours).

What a run could have learned from is its own (`seen_material` in sweep/pipeline/score.py): an
adapter's training rows (the seeded subset it trained on, and generated tasks mixed in), a baseline's
demonstrations (every draw it prompted with), nothing for a zero-shot prompt. Each arm is audited on
what it saw, both ways. lm-eval's decontamination needs an n-gram index of the pretraining corpus
built by hand and is never applied to fine-tuning data; this is that check on the data a sweep
controls, a few seconds per task (cached by content).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from sweep.data.grouping import PhraseIndex, words  # (one normalisation builds the splits and audits them)

NGRAM = 13         # GPT-3 / lm-eval decontamination
CONTAINED_WORDS = 5  # a seen text at least this long inside a test example flags it
MIN_NGRAM = 8      # a test example shorter than this is flagged only when it equals a training document
ROUGE_L = 0.8      # near-duplicate: ROUGE-L F1 at least this
COMMON = 0.01      # words in more than this share of training documents do not pick candidates
CANDIDATES = 20    # training documents (most shared uncommon words) compared with a test example by ROUGE-L
ROUGE_WORDS = 64   # longer test examples are checked by n-grams alone (a near-copy of one shares a 13-gram;
                   # ROUGE-L's quadratic cost on HH-RLHF's 300-word dialogues would take minutes)


def text_fields(doc: dict) -> list[str]:
    """A document's text fields, in order: its string fields bar ids and labels. A field named
    `label...` is a label even when it is a word (RTE's `label_text`, "entailment"): retrieval,
    instruction proposals and the leakage audit read the text, never the answer."""
    return [k for k, v in doc.items() if isinstance(v, str) and not k.startswith("label")]


def doc_text(doc: dict) -> str:
    """A document's text: its text fields, joined."""
    return " ".join(doc[k] for k in text_fields(doc))


@dataclass(frozen=True)
class Flag:
    doc_id: int      # the test example (lm-eval's doc_id: its index among the task's test documents)
    kind: str        # "containment" (inside a seen text), "contains" (holds one), "ngram" or "rouge_l"
    score: float     # words of the text inside the other, of the shared n-gram, or the ROUGE-L F1
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


def rouge_l_words(test: tuple, training: tuple) -> float:
    """ROUGE-L F1 of two word sequences, on the normalised words the split was built with (the
    rouge-score package of Self-Instruct's filter, sweep/self_instruct/filters.py, tokenises its own way)."""
    common = lcs(test, training)
    return 0.0 if common == 0 else 2 * common / (len(test) + len(training))


def audit(test_docs: list[str], training_docs: list[str]) -> list[Flag]:
    """Every test document (by index) that overlaps a training document, with its closest one."""
    train = [words(t) for t in training_docs]
    contained = PhraseIndex(train)
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
        holding = contained.containing(w) if w else set()
        if holding:
            flags.append(Flag(doc_id, "containment", float(len(w)), text, training_docs[min(holding)]))
            continue
        inner = [i for i in contained.inside_of(w) if len(train[i]) >= CONTAINED_WORDS] if len(w) <= ROUGE_WORDS \
            else []
        if inner:
            longest = max(inner, key=lambda i: (len(train[i]), -i))
            flags.append(Flag(doc_id, "contains", float(len(train[longest])), text, training_docs[longest]))
            continue
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
        score = rouge_l_words(w, train[i])
        if best is None or score > best[1]:
            best = (i, score)
    return best


def audit_task(task, material: list[str], cache: Path) -> list[Flag]:
    """`audit` of the task's test documents (lm-eval's order: their doc_ids) against `material`, the
    texts the run saw; kept under `cache` by the test texts, the material and the settings."""
    test = [doc_text(d) for d in task.eval_docs]
    if not material:
        return []
    settings = [NGRAM, MIN_NGRAM, CONTAINED_WORDS, ROUGE_L, COMMON, CANDIDATES, ROUGE_WORDS]
    key = hashlib.sha256(json.dumps([task.config.task, test, sorted(set(material)), settings]).encode())
    path = Path(cache) / f"{key.hexdigest()[:24]}.json"
    if path.is_file():
        return [Flag(**f) for f in json.loads(path.read_text())]
    flags = audit(test, list(dict.fromkeys(material)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([asdict(f) for f in flags]))
    tmp.replace(path)
    return flags
