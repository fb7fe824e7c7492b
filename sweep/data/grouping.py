"""Which examples share a source, so that test, development and training examples never do.

GLUE's SST-2 train file is every phrase of SST's parse trees: a sentence, its sub-phrases, and
copies that differ in case or punctuation. Two examples are *related* when one's normalised word
sequence equals the other's or lies inside it (whole words, lower-cased, punctuation dropped): a
test sentence and any phrase inside it come from one source. A *full sentence* is a phrase that lies
inside no other phrase. RTE reuses a premise with several hypotheses: its examples are grouped by
premise. The split builder (`scripts/build_splits.py`) and the leakage audit both use this module,
so the rule that builds the split is the rule that audits it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)?")


def words(text: str) -> tuple[str, ...]:
    """Lower-cased words, punctuation dropped (`"It's a -- GOOD film ."` -> `("it's", "a", "good", "film")`)."""
    return tuple(_WORD.findall(text.lower()))


def spans(seq: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    """Every contiguous non-empty sub-sequence of `seq`, `seq` itself included."""
    n = len(seq)
    for i in range(n):
        for j in range(i + 1, n + 1):
            yield seq[i:j]


def inside(small: tuple[str, ...], big: tuple[str, ...]) -> bool:
    """Whether `small` is a contiguous run of `big`'s words (equal counts)."""
    if not small or len(small) > len(big):
        return False
    n = len(small)
    return any(big[i:i + n] == small for i in range(len(big) - n + 1))


def related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Equal, or one inside the other: the two examples come from one source."""
    return inside(a, b) or inside(b, a)


class PhraseIndex:
    """The normalised texts of a set of examples, for containment look-ups in both directions.

    `inside_of(seq)` finds the indexed texts lying inside `seq` by looking up each of its spans
    (quadratic in its length, fine for sentences); `containing(seq)` finds the indexed texts `seq`
    lies inside, through an index from each word to the texts holding it (the rarest word of `seq`
    narrows the candidates)."""

    def __init__(self, texts: Iterable[tuple[str, ...]]):
        self.texts = list(texts)
        self.by_text: dict[tuple[str, ...], list[int]] = {}
        self.by_word: dict[str, set[int]] = {}
        for i, t in enumerate(self.texts):
            self.by_text.setdefault(t, []).append(i)
            for w in set(t):
                self.by_word.setdefault(w, set()).add(i)

    def inside_of(self, seq: tuple[str, ...]) -> set[int]:
        """Indices of the texts equal to `seq` or inside it."""
        return {i for s in set(spans(seq)) for i in self.by_text.get(s, ())}

    def containing(self, seq: tuple[str, ...]) -> set[int]:
        """Indices of the texts equal to `seq` or containing it."""
        if not seq:
            return set()
        rarest = min(set(seq), key=lambda w: len(self.by_word.get(w, ())))
        return {i for i in self.by_word.get(rarest, ()) if inside(seq, self.texts[i])}

    def related_to(self, seq: tuple[str, ...]) -> set[int]:
        """Indices of the texts equal to, inside, or containing `seq`."""
        return self.inside_of(seq) | self.containing(seq)


def full_sentences(texts: list[tuple[str, ...]]) -> list[int]:
    """Indices of the texts that lie inside no other, longer text (one index per distinct text, the
    first): SST's full sentences among GLUE's phrases."""
    distinct = {}
    for i, t in enumerate(texts):
        if t:
            distinct.setdefault(t, i)
    covered = set()
    for t in distinct:
        covered.update(s for s in spans(t) if s != t)
    return sorted(i for t, i in distinct.items() if t not in covered)
