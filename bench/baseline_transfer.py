"""Does the strongest baseline's choice transfer? Every variant of the search, scored with fixed
draws on a large development pool, the quickstart's test examples, the rest of the validation
split and a held-apart sample of the train split; then each selection rule applied to many random
development slices, and what it chose scored on the other sets.

    python bench/baseline_transfer.py            # SmolLM2-135M on SST-2: about 70 min on 2 cores
    python bench/baseline_transfer.py --rules-only   # the rules again on the saved scores

Writes bench/baseline_transfer.json (per-example scores) and bench/baseline_transfer.md (the
tables docs/protocol.md quotes). The pools are disjoint: `--dev` development examples and `--held`
held-apart ones, both from the train split without any test sentence; demonstrations come from
the rest of it, drawn once per variant (seeded as the harness draws them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweep.data import splits  # noqa: E402
from sweep.scoring import race  # noqa: E402
from sweep.scoring.baselines import Variant  # noqa: E402

SCORES, TABLES = ROOT / "bench" / "baseline_transfer.json", ROOT / "bench" / "baseline_transfer.md"
POOL_SEED, RULE_SEED = 12345, 0
TEST = 400  # the quickstart's eval.limit: the first 400 validation examples are its test examples


def score_everything(n_dev: int, n_held: int) -> dict:
    """{"template|k|sampler|set": {"cal": [[score per draw] per example], "uncal": ...}} for sets dev,
    held (the held-apart train sample) and val (all 1,000 validation examples)."""
    from sweep.config import compose_config
    from sweep.pipeline.build import load_project_tasks
    from sweep.scoring.evaluate import Prompting, make_lm, score
    from sweep.training.models import load_model_and_tokenizer

    cfg = compose_config(["experiment=quickstart", "method=strongest_baseline"])
    lm = make_lm(*load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0), 32)
    task = load_project_tasks(cfg, "default")[1]["sst2"]
    test_texts = {splits.text_of(task, d) for d in task.eval_docs}
    train = task.dataset["train"]
    order = list(range(len(train)))
    random.Random(POOL_SEED).shuffle(order)
    picked = [i for i in order[:2 * (n_dev + n_held)] if splits.text_of(task, train[i]) not in test_texts]
    dev, held = sorted(picked[:n_dev]), sorted(picked[n_dev:n_dev + n_held])
    out = {}
    for template in ("default", "plain", "chat"):
        tm, tasks = load_project_tasks(cfg, template)
        t = tasks["sst2"]
        sets = {"dev": splits.dev_task(t, dev), "held": splits.dev_task(t, held), "val": t}
        pool = splits.demonstration_pool(t, dev + held)
        for k, sampler in ((0, "random"), (4, "random"), (4, "balanced")):
            prompting = Prompting(num_fewshot=k, sampler=sampler, draws=3 if k else 1, calibrate=True, seed=0)
            for name, s in sets.items():
                start = time.perf_counter()
                samples = score(lm, tm, {"sst2": s}, prompting, None, True, pools={"sst2": pool}).results["samples"]["sst2"]
                out[f"{template}|{k}|{sampler}|{name}"] = {
                    cal: [x.get(f"{key}_by_draw", [x[key]]) for x in samples]
                    for cal, key in (("cal", "acc"), ("uncal", "acc_uncalibrated"))}
                print(f"{template} k={k} {sampler} {name}: {len(samples)} examples, {time.perf_counter() - start:.0f} s",
                      flush=True)
    return out


def variants_of(scores: dict) -> dict[Variant, dict[str, np.ndarray]]:
    """{variant: {set: draws x examples}}."""
    out: dict[Variant, dict] = {}
    for key, value in scores.items():
        template, k, sampler, name = key.split("|")
        for cal in ("uncal", "cal"):
            v = Variant(template, int(k), sampler, cal == "cal")
            out.setdefault(v, {})[name] = np.array(value[cal], dtype=float).T
    return out


def record(v: Variant, draws: np.ndarray) -> race.Raced:
    r = race.Raced(v)
    r.extend(draws.tolist(), [[0] * draws.shape[1]] * draws.shape[0], [0] * draws.shape[1])
    return r


def best_mean(records: list[race.Raced]) -> race.Raced:
    """The protocol before the race: the best development mean."""
    return max(records, key=race.Raced.mean)


def one_se(level):
    """The one-standard-error rule with `level(variant)` as complexity."""
    def rule(records):
        saved, race.complexity = race.complexity, level
        try:
            return race.choose(records)
        finally:
            race.complexity = saved
    return rule


RULES = {"best development mean": best_mean,
         "1-SE, complexity = (k, calibration)": one_se(lambda v: (v.num_fewshot, v.calibrate)),
         "1-SE, complexity = k (the harness's)": one_se(race.complexity)}


def tables(scores: dict, dev_sizes: list[int], resamples: int) -> str:
    """The per-variant table and each rule's expected test and held-apart scores over random slices."""
    variants = variants_of(scores)
    order = sorted(variants, key=lambda v: (v.num_fewshot, v.calibrate, v.template != "default", v.template,
                                            v.fewshot_sampler))
    n_dev = variants[order[0]]["dev"].shape[1]
    test = lambda v, lo=0, hi=TEST: float(variants[v]["val"][:, lo:hi].mean())  # noqa: E731
    held = lambda v: float(variants[v]["held"].mean())  # noqa: E731
    lines = ["| variant | development | test (first 400) | rest of validation (600) | held-apart train |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {v.label()} | {variants[v]['dev'].mean():.3f} | {test(v):.3f} | {test(v, TEST, None):.3f} | "
              f"{held(v):.3f} |" for v in order]
    plain_zero = Variant("plain", 0, "random", False)
    lines += ["", "| rule | development examples | E[test] | E[rest of validation] | E[held-apart] | "
              "P(test >= plain zero-shot - 0.015) | chosen most often |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    rng = np.random.default_rng(RULE_SEED)
    for size in dev_sizes:
        slices = [np.sort(rng.choice(n_dev, size, replace=False)) for _ in range(resamples)]
        for name, rule in RULES.items():
            picks = [rule([record(v, variants[v]["dev"][:, idx]) for v in order]).variant for idx in slices]
            mean = lambda f, picks=picks: float(np.mean([f(v) for v in picks]))  # noqa: E731
            top = max(set(picks), key=picks.count)
            lines.append(f"| {name} | {size} | {mean(test):.3f} | {mean(lambda v: test(v, TEST, None)):.3f} | "
                         f"{mean(held):.3f} | {mean(lambda v: test(v) >= test(plain_zero) - 0.015):.2f} | "
                         f"{top.label()} ({picks.count(top) / len(picks):.0%}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dev", type=int, default=600, help="development pool (examples of the train split)")
    ap.add_argument("--held", type=int, default=1000, help="held-apart examples of the train split")
    ap.add_argument("--rules-only", action="store_true", help="apply the rules to the saved scores")
    ap.add_argument("--resamples", type=int, default=200, help="random development slices per size and rule")
    a = ap.parse_args(argv)
    if not a.rules_only:
        SCORES.write_text(json.dumps(score_everything(a.dev, a.held)))
    scores = json.loads(SCORES.read_text())
    TABLES.write_text(tables(scores, [200, 400], a.resamples))
    print(TABLES.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
