"""Cost and break-even (analysis/cost.py) on constructed runs: a known break-even and a known front."""

import math

import pandas as pd

from analysis.cost import break_even, cost_view

PARAMS = 1_000_000


def row(name, method, acc, prompt_tokens, seconds_per_1k, train_flops=None, train_seconds=None):
    r = {"run_id": name, "status": "FINISHED", "tags.mlflow.runName": name, "tags.method": method,
         "tags.model": "m", "params.eval.limit": "400", "tags.machine": "2 cores of a test CPU",
         "metrics.sst2/acc": acc, "metrics.total_params": PARAMS, "metrics.query_prompt_tokens": prompt_tokens,
         "metrics.query_seconds_per_1k": seconds_per_1k}
    if train_flops is not None:
        r |= {"metrics.train_flops": train_flops, "metrics.train_seconds": train_seconds}
    return r


def test_break_even_is_training_over_the_saving_per_query_and_never_without_a_saving():
    assert break_even(1e12, 2 * PARAMS * 20, 2 * PARAMS * 120) == 5000  # 1e12 / (2e6 x 100 tokens)
    assert math.isinf(break_even(1e12, 2 * PARAMS * 120, 2 * PARAMS * 100))
    assert break_even(1e12, None, 1.0) is None
    assert math.isinf(break_even(400.0, 0.095, 0.1, noise=0.1))  # (5% faster by the clock: within a timing's jitter)


def test_the_report_states_each_adapters_break_even_and_the_front_at_each_volume():
    done = pd.DataFrame([
        row("strongest", "strongest_baseline", 0.80, 120, 50.0),     # 4 shots: long prompts
        row("zero", "zero_shot", 0.70, 20, 10.0),
        row("lora-a", "lora", 0.85, 20, 10.0, train_flops=1e12, train_seconds=400.0),
        row("lora-b", "lora", 0.79, 20, 10.0, train_flops=4e12, train_seconds=900.0),  # dearer and worse than lora-a
    ])
    [(title, table, note)], figures = cost_view(done, "sst2/acc")
    t = table.set_index("run")
    assert t.loc["lora-a", "repaid after (FLOPs)"] == "5,000"  # 1e12 / (2e6 x (120 - 20))
    assert t.loc["lora-a", "repaid after (seconds)"] == "10,000"  # 400 s / ((50 - 10) s / 1000 queries)
    assert t.loc["lora-b", "repaid after (FLOPs)"] == "20,000"
    assert t.loc["strongest", "repaid after (FLOPs)"] == "-"  # (a baseline trains nothing)
    # At 1,000 queries the untrained baselines cost least; at a million, lora-a's short prompts win on both counts.
    assert t.loc["zero", "on the front at"] == "1,000, 1,000,000" and t.loc["strongest", "on the front at"] == "1,000"
    assert t.loc["lora-a", "on the front at"] == "1,000, 1,000,000" and t.loc["lora-b", "on the front at"] == "-"
    assert t.loc["lora-a", "prompt tokens per query"] == "20" and "2 cores of a test CPU" in note
    assert list(figures) == ["sst2/acc: score against cost"] and figures["sst2/acc: score against cost"][:4] == b"\x89PNG"


def test_without_training_costs_there_is_no_cost_section():
    done = pd.DataFrame([row("zero", "zero_shot", 0.70, 20, 10.0), row("strongest", "strongest_baseline", 0.8, 120, 50)])
    assert cost_view(done, "sst2/acc") == ([], {})
