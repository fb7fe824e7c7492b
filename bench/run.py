"""The benchmark suite: `make bench` (SmolLM2-135M, about 1 h 50 min on 2 CPU cores), `make bench
PROFILE=session` (every row on reduced sizes, at most 30 min: a session's check after a change) or
`python bench/run.py --quick` (the tiny model, ~6 min; the test suite runs two of its rows).

These machines are noisy, so every figure is a ratio of two things measured side by side in this
one run, with the raw timings (median of the repeats) beside it. Writes bench/results.json and
bench/results.md (or --out).

1. harness overhead   `python sweep.py` (LoRA, no scoring) vs bench/bare_lora.py (plain torch loop)
2. model start-up     cached safetensors load vs the first GGUF conversion
3. scoring            in-process lm-eval on the trained model vs saving and reloading the adapter;
                      zero-shot vs k-shot cost per example (prefix-cached, and lm-eval's own HFLM);
                      the k-shot pass with the LM head at every position vs at the answer positions
   baseline panel     3 templates x {0-shot, 4-shot x 3 draws}, calibrated (so both variants), on
                      `panel_examples` SST-2 examples: lm-eval's HFLM vs the prefix-cached scorer
   strongest search   the strongest baseline's search (18 variants): every variant on the whole
                      development slice (the protocol before the race: 200 examples, p_threshold=0)
                      vs the race (sweep/scoring/race.py) on twice as many: seconds, and what each chose
4. padding waste      pad fraction and tokens/s, random vs length-grouped batches, and padding-free
                      ones (train.padding_free) of each
   compiled step      seconds a step, torch.compile'd (train.torch_compile) vs eager, both on batches
                      rounded up to 64 tokens: compile seconds, the saving a step, the break-even in steps
   training features  tokens/s with and without the answer-only LM head, bf16 autocast, eager attention
                      on the CPU (train.attn_implementation=auto), and LoRA's dropout
5. sweep efficiency   a 12-configuration grid vs the Optuna sweeper with a median pruner on the same
                      space (its grid sampler by default: every configuration is started, the
                      pruner stops the weak ones early); each arm is judged by the one test score of
                      the configuration its development scores choose
6. peer comparison    tokens/s of our training vs TRL's SFTTrainer on the same LoRA SFT
8. memory             one multirun of 10 jobs (5 methods x SST-2 and RTE): each job's peak RSS and
                      tokens/s, and the RSS each job starts from, with every job in the sweep's process
                      (Hydra's basic launcher) vs each in a fresh one (hydra/launcher=fresh_process)
   start-up           3- and 10-job multiruns of tiny LoRA jobs, in the sweep's process vs forked from
                      the server, alternately, three times: each job's start-up beyond the sweep's own
                      process (the server's one-time imports counted once per sweep) and the wall ratio
9. RL stage           the RLHF pipeline's RL step (sft -> reward -> grpo, ppo; experiment=rlhf, no
                      scoring): PPO's rollout (generation) tokens/s against its training tokens/s
                      (forward + backward over prompt and reply), and GRPO's training tokens/s
10. judged KL         the KL pass of judged scoring (log p(reply | prompt) under the policy) on the
                      instruction tasks' prompts in the chat template with their reference replies:
                      every position's logits of right-padded batches in input order (as before) vs
                      sweep/stages/judging.py's length-sorted, left-padded batches with the last positions'
                      logits only: seconds and extra peak memory of each, and their largest difference
7. team study         finished trials per hour on the team's servers (PostgreSQL study, MLflow
                      server) with 1 and 2 workers, and the per-trial cost of their round trips
                      against the embedded stores (journal file, SQLite): the tiny model's short
                      trials, so the figure is the harness and the stores, not training
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PROFILES, ROOT  # noqa: E402
from bench.rows_scoring import ScoringRows  # noqa: E402
from bench.rows_sweeps import SweepRows, sweep_efficiency_figures  # noqa: E402,F401  (tests read the figures)
from bench.rows_training import TrainingRows  # noqa: E402
from sweep.runtime.machine import describe as describe_machine  # noqa: E402


class Bench(TrainingRows, ScoringRows, SweepRows):
    """Every row of the benchmark (bench/rows_*.py), each a method named as in BENCHMARKS."""


def markdown(results: dict) -> str:
    lines = [f"# Benchmarks ({results['machine']}, {results['mode']})", ""]
    if "whole_run_seconds" in results:
        lines += [f"One whole run: {results['whole_run_seconds'] / 60:.0f} min"
                  + (f"; measured again since: {', '.join(sorted(results['measured_again']))}"
                     if results.get("measured_again")
                     else "") + ".", ""]
    for name, figures in results["benchmarks"].items():
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        for key, value in _flat(figures):
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def _flat(d: dict, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def write(results: dict, out: Path) -> None:
    """results.json and results.md, after every row (a run stopped midway keeps the rows it measured)."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))


BENCHMARKS = ("harness_overhead", "model_startup", "scoring", "baseline_panel", "strongest_search", "padding",
              "compiled_step", "training_features", "sweep_efficiency", "trl", "team_study", "memory", "start_up", "rl_stage", "judged_kl",
              "generation", "roofline")


def carried_over(previous: dict, results: dict, only: list[str]) -> dict:
    """A partial run's results: the previous run's rows and settings, with the rows it measures again
    named (and their settings kept apart), so that a file never passes off a mix as one run."""
    if previous.get("mode") != results["mode"]:
        return results
    this_run = {"machine": results["machine"], "params": results["params"]}
    again = {**previous.get("measured_again", {}), **{name: this_run for name in only}}
    return previous | {"benchmarks": dict(previous["benchmarks"]), "measured_again": again}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=PROFILES, default="full",
                    help="full: the README's figures (about 1 h 50 min on 2 cores); session: every row on reduced "
                         "sizes, SmolLM2 still (at most 30 min); quick: the tiny model (a smoke test)")
    ap.add_argument("--quick", action="store_const", const="quick", dest="profile", help="--profile quick")
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                    help=f"run these benchmarks only, keeping the other rows of --out's results.json: {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder for results.json and results.md")
    ap.add_argument("--panel-examples", type=int, help="examples per pass of the baseline panel (default: 200, "
                                                       "quick: 16); lm-eval's own HFLM takes about an hour for all 872")
    ap.add_argument("--repeats", type=int, help="repeats of each timing, their median reported (default: 1)")
    a = ap.parse_args(argv)
    params = dict(PROFILES[a.profile])
    if a.repeats:
        params["repeats"] = a.repeats
    if a.panel_examples:
        params["panel_examples"] = a.panel_examples
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    mode = "quick (tiny model)" if a.profile == "quick" else f"{a.profile} ({params['model']})"
    results = {"machine": describe_machine(), "mode": mode, "params": params, "benchmarks": {}}
    if a.only and (out / "results.json").is_file():
        results = carried_over(json.loads((out / "results.json").read_text()), results, a.only)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        bench = Bench(params, Path(work))
        for name in a.only or BENCHMARKS:
            start = time.perf_counter()
            print(f"[bench] {name} ...", flush=True)
            results["benchmarks"][name] = getattr(bench, name)() | {"bench_seconds": time.perf_counter() - start,
                                                                     "profile": a.profile}
            print(f"[bench] {name}: {json.dumps(results['benchmarks'][name])}", flush=True)
            write(results, out)
    if not a.only:
        write(results | {"whole_run_seconds": time.perf_counter() - began}, out)
    print(f"[bench] wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
