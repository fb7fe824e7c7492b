"""The leakage audit on constructed cases (sweep/scoring/leakage.py)."""

from sweep.scoring.leakage import audit, lcs, rouge_l, words

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
    assert rouge_l(a, b) == 2 * 4 / (6 + 6)  # the, cat, on, mat
    assert rouge_l(a, words("dogs bark")) == 0.0
