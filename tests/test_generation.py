"""Length-batched generation (sweep/scoring/generation.py) gives lm-eval's greedy replies, in the
requests' order, while a long prompt no longer pads a whole batch."""

import pytest
from lm_eval.api.instance import Instance

from sweep.scoring.batching import TOKENS_PER_ROW
from sweep.scoring.evaluate import make_lm

GREEDY = {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 12}
SHORT = {"until": ["\n\n"], "do_sample": False, "max_gen_toks": 6}  # (other settings: never in one batch)


def requests(long_words: int) -> list[Instance]:
    """Prompts of 3 to `long_words` words, the long one in the middle, two generation settings."""
    prompts = [f"Question {i}: name a colour" + " and a fruit" * (i % 4) + "." for i in range(9)]
    prompts.insert(4, "Tell me a story about " + "a long road and " * long_words + "a house.")
    return [Instance("generate_until", {}, (p, GREEDY if i % 3 else SHORT), i) for i, p in enumerate(prompts)]


def padded_shapes(lm) -> list[tuple[int, int]]:
    """(rows, padded prompt tokens) of each generate call `lm` makes."""
    shapes, generate = [], lm._model_generate

    def recording(context, **kwargs):
        shapes.append(tuple(context.shape))
        return generate(context, **kwargs)

    lm._model_generate = recording
    return shapes


def test_replies_equal_lm_evals_and_the_long_prompt_pads_few_rows(tiny):
    model, tokenizer = tiny
    stock = make_lm(model, tokenizer, 8, prefix_cache=False, length_batched=False)
    ours = make_lm(model, tokenizer, 8)
    asked = requests(long_words=120)
    stock_shapes, our_shapes = padded_shapes(stock), padded_shapes(ours)
    expected = stock.generate_until(asked, disable_tqdm=True)
    assert ours.generate_until(asked, disable_tqdm=True) == expected
    assert len(set(expected)) > 1  # (replies that differ: the order is checked, not one reply repeated)
    longest = max(width for _, width in stock_shapes)
    assert any(rows > 1 and width == longest for rows, width in stock_shapes)  # lm-eval pads short prompts to it
    assert all(rows * width <= 8 * TOKENS_PER_ROW or rows == 1 for rows, width in our_shapes)
    assert sum(r * w for r, w in our_shapes) < sum(r * w for r, w in stock_shapes)


@pytest.mark.slow
def test_replies_equal_lm_evals_on_smollm2():
    from sweep.training.models import load_model_and_tokenizer
    from tests.conftest import compose

    cfg = compose()
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0)
    asked = requests(long_words=60)
    stock = make_lm(model, tokenizer, 8, prefix_cache=False, length_batched=False).generate_until(asked, True)
    assert make_lm(model, tokenizer, 8).generate_until(asked, True) == stock
