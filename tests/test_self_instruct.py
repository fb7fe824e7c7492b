"""Self-Instruct's prompt and filters: each of the paper's rules on its own."""

import pytest

from sweep.self_instruct.filters import (
    SIMILARITY_LIMIT,
    check_instance,
    check_instruction,
    instruction_prompt,
    parse_instructions,
    rouge_l,
)

WORDS = "write a short friendly note that thanks a colleague for help with the quarterly budget report this week before friday".split()
POOL = [" ".join(WORDS)]  # 20 words


def replaced(n: int) -> str:
    """WORDS with its last n words replaced by words not in it: ROUGE-L = (20 - n) / 20."""
    return " ".join(WORDS[: len(WORDS) - n] + [f"zz{i}" for i in range(n)])


def reason(instruction: str, pool=POOL) -> str | None:
    rejected = check_instruction(instruction, pool)
    return rejected.reason if rejected else None


def test_near_duplicates_are_rejected_and_distinct_instructions_kept():
    assert rouge_l(replaced(5), POOL[0]) == pytest.approx(0.75)
    assert reason(replaced(5)) == "similar"
    assert rouge_l(replaced(8), POOL[0]) == pytest.approx(0.6)
    assert reason(replaced(8)) is None
    assert rouge_l(replaced(6), POOL[0]) == pytest.approx(SIMILARITY_LIMIT)
    assert reason(replaced(6)) == "similar"  # at the limit: rejected (the paper keeps only < 0.7)
    assert reason(POOL[0]) == "duplicate"


@pytest.mark.parametrize("instruction, why", [
    ("Describe the image below in detail please.", "unsuitable"),
    ("Plot the sales figures for the last year.", "unsuitable"),
    ("Tell me how to go to the station from here.", "unsuitable"),
    ("Summarize this article in two sentences.", None),
    ("Explain what a mapping function does.", None),  # "map" only as a whole word
    ("Name it.", "length"),
    (" ".join(["word"] * 151), "length"),
    ("Write a program that prints the first ten primes.", "write_a_program"),
    ("- List five fruits that are red.", "punctuation"),
    ("Écris une phrase sur la mer aujourd'hui.", "non_ascii"),
])
def test_the_papers_keyword_length_and_form_rules(instruction, why):
    assert reason(instruction, pool=[]) == why


def test_generated_instances_need_an_output_of_their_own():
    assert check_instance("2 + 2", "").reason == "empty_output"
    assert check_instance("Hello there", " Hello there ").reason == "copied_input"
    assert check_instance("", "Paris") is None and check_instance("2 + 2", "4") is None


def test_prompt_numbers_the_tasks_and_the_completion_parses_back():
    prompt = instruction_prompt(["Give me a quote:", "Sort   the\nlist."])
    assert prompt == "Come up with a series of tasks:\n1. Give me a quote\n2. Sort the list.\n3."
    assert instruction_prompt(["Is it spam?"], classification=True).startswith(
        "Come up with a series of classification tasks.")
    completion = " Name three colors.\n4. Translate the sentence\nto French.\n5.  Count the vowels."
    assert parse_instructions(completion) == ["Name three colors.", "Translate the sentence to French.",
                                              "Count the vowels."]
