"""The benchmark suite runs end to end (tiny model); its figures are ratios with raw timings beside."""

import json
import os

import pytest

from tests import forked
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_quick_benchmark_writes_every_figure(tmp_path):
    p = forked.run(["bench/run.py", "--quick", "--out", str(tmp_path)], ROOT, dict(os.environ), timeout=2400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    b = results["benchmarks"]
    assert results["whole_run_seconds"] >= sum(row["bench_seconds"] for row in b.values())
    assert set(b) == {"harness_overhead", "model_startup", "scoring", "baseline_panel", "strongest_search", "padding",
                      "training_features", "sweep_efficiency", "trl", "team_study", "memory", "rl_stage", "judged_kl",
                      "generation", "roofline"}
    search = b["strongest_search"]
    assert search["full_search"]["variants_dropped"] == 0 and search["race"]["dev_examples"] == 32
    assert search["race_vs_full_time"] == pytest.approx(search["race"]["seconds"] / search["full_search"]["seconds"])
    assert b["baseline_panel"]["same_accuracies"] and b["baseline_panel"]["passes"] == 12
    assert b["baseline_panel"]["speedup"] == pytest.approx(
        b["baseline_panel"]["lm_eval_hflm_seconds"] / b["baseline_panel"]["prefix_cached_seconds"])
    assert b["training_features"]["answer_only_speedup"] > 0
    assert b["harness_overhead"]["harness_step_seconds"] > 0 and b["harness_overhead"]["bare_step_seconds"] > 0
    assert b["harness_overhead"]["ratio"] == pytest.approx(
        b["harness_overhead"]["harness_step_seconds"] / b["harness_overhead"]["bare_step_seconds"])
    assert b["model_startup"]["cached_load_seconds"] < b["model_startup"]["gguf_conversion_seconds"]
    assert b["padding"]["group_by_length"]["pad_fraction"] < b["padding"]["random"]["pad_fraction"]
    assert b["sweep_efficiency"]["grid"]["runs"] == 2 and b["sweep_efficiency"]["grid"]["train_steps"] == 2 * 4
    assert 0 < b["sweep_efficiency"]["optuna"]["train_steps"] <= 1 * 4
    trl = b["trl"]
    assert trl["ours_tokens_per_second"] > 0 and trl["trl_tokens_per_second"] > 0
    assert trl["ratio"] == pytest.approx(trl["ours_tokens_per_second"] / trl["trl_tuned_tokens_per_second"])
    assert trl["trl_tuned"] == {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"}
    team = b["team_study"]
    assert team["trials"] == 2 and team["trials_per_hour"] == {"embedded_1_worker": pytest.approx(
        2 / team["embedded_seconds"] * 3600)}  # (quick: no servers)
    memory = b["memory"]
    for launcher in ("basic", "spawn", "fresh_process"):
        jobs = memory[launcher]["jobs"]
        assert set(jobs) == {"lora/sst2"} and all(j["peak_rss_mb"] > 0 for j in jobs.values())
        assert jobs["lora/sst2"]["train_tokens_per_second"] > 0
    for launcher in ("spawn", "fresh_process"):  # (spawned interpreters, and forks of the server: the default)
        assert memory[f"{launcher}_wall_ratio"] == pytest.approx(
            memory[launcher]["wall_seconds"] / memory["basic"]["wall_seconds"])
        assert memory[launcher]["start_up_seconds_per_job"] == pytest.approx(
            (memory[launcher]["wall_seconds"] - memory["basic"]["wall_seconds"]) / 1)
    rl = b["rl_stage"]
    assert rl["ppo_rollout_tokens_per_second"] > 0 and rl["ppo_train_tokens_per_second"] > 0
    assert rl["rollout_vs_training"] == pytest.approx(rl["ppo_rollout_tokens_per_second"] / rl["ppo_train_tokens_per_second"])
    assert rl["grpo_train_tokens_per_second"] > 0
    kl = b["judged_kl"]
    assert kl["rows"] == 16 + 16 and kl["max_abs_difference"] < 1e-2  # the same log-probabilities, cheaper
    assert kl["speedup"] == pytest.approx(kl["whole_sequence"]["seconds"] / kl["last_positions"]["seconds"])
    generation = b["generation"]
    assert generation["replies_equal"] is True  # token-budget batches, lm-eval's replies
    assert generation["speedup"] == pytest.approx(generation["lm_eval_hflm_seconds"] / generation["length_batched_seconds"])
    roof = b["roofline"]
    for part, multiple in (("training", 6), ("scoring", 2)):
        figures = roof[part]
        assert figures["fraction_of_peak"] == pytest.approx(
            multiple * roof["parameters"] * figures["tokens_per_second"] / roof["peak_matmul_flops"][figures["dtype"]])
        assert figures["fraction_of_peak"] > 0
    assert "## harness_overhead" in (tmp_path / "results.md").read_text()
