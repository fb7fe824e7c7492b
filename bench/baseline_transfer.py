"""Does the strongest baseline's choice transfer? Every variant of the search, scored with fixed
draws on the development split and on the held-apart sample of full sentences (never bundled, never
read by a choice: scripts/build_splits.py writes it); then each selection rule applied to many random
development slices, and what it chose scored on the held-apart sample. The quickstart's test
examples are not scored here: a rule chosen by this study is chosen without them.

    python scripts/build_splits.py               # once: the held-apart sample under .cache/held_apart
    python bench/baseline_transfer.py            # SmolLM2-135M on SST-2: about 50 min on 2 cores
    python bench/baseline_transfer.py --rules-only   # the rules again on the saved scores

Writes bench/baseline_transfer.json (per-example scores) and bench/baseline_transfer.md (the
tables docs/protocol.md quotes). Demonstrations come from the train split, drawn once per variant
(seeded as the harness draws them); no training phrase is related to a development or held-apart
sentence.
"""

from __future__ import annotations

import argparse
import json
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
HELD_APART = ROOT / ".cache" / "held_apart"  # scripts/build_splits.py's --held-apart folder
RULE_SEED = 0


def score_everything(held_apart: Path) -> dict:
    """{"template|k|sampler|set": {"cal": [[score per draw] per example], "uncal": ...}} for sets dev
    (the task's development split) and held (the held-apart sample: the same task read from
    `held_apart`, whose validation split it is)."""
    from sweep.config import compose_config
    from sweep.pipeline.build import load_project_tasks
    from sweep.scoring.evaluate import Prompting, make_lm, score
    from sweep.training.models import load_model_and_tokenizer

    if not (held_apart / "sst2" / "validation.jsonl").is_file():
        raise SystemExit(f"error: no held-apart sample in {held_apart}: run python scripts/build_splits.py first")
    cfg = compose_config(["experiment=quickstart", "method=strongest_baseline"])
    held_cfg = compose_config(["experiment=quickstart", "method=strongest_baseline", f"paths.data={held_apart}"])
    lm = make_lm(*load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0), 32)
    out = {}
    for template in ("default", "plain", "chat"):
        tm, tasks = load_project_tasks(cfg, template)
        t = tasks["sst2"]
        dev = splits.dev_task(t, list(range(len(t.dataset[splits.DEV_SPLIT]))))
        sets = {"dev": dev, "held": load_project_tasks(held_cfg, template)[1]["sst2"]}
        pool = splits.demonstration_pool(t, [])
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
    """The per-variant table and each rule's expected held-apart score over random development slices."""
    variants = variants_of(scores)
    order = sorted(variants, key=lambda v: (v.num_fewshot, v.calibrate, v.template != "default", v.template,
                                            v.fewshot_sampler))
    n_dev = variants[order[0]]["dev"].shape[1]
    held = lambda v: float(variants[v]["held"].mean())  # noqa: E731
    lines = ["| variant | development | held-apart sentences |", "| --- | ---: | ---: |"]
    lines += [f"| {v.label()} | {variants[v]['dev'].mean():.3f} | {held(v):.3f} |" for v in order]
    plain_zero = Variant("plain", 0, "random", False)
    lines += ["", "| rule | development examples | E[held-apart] | P(held-apart >= plain zero-shot - 0.015) | "
              "chosen most often |", "| --- | ---: | ---: | ---: | --- |"]
    rng = np.random.default_rng(RULE_SEED)
    for size in dev_sizes:
        slices = [np.sort(rng.choice(n_dev, size, replace=False)) for _ in range(resamples)]
        for name, rule in RULES.items():
            picks = [rule([record(v, variants[v]["dev"][:, idx]) for v in order]).variant for idx in slices]
            mean = lambda f, picks=picks: float(np.mean([f(v) for v in picks]))  # noqa: E731
            top = max(set(picks), key=picks.count)
            lines.append(f"| {name} | {size} | {mean(held):.3f} | "
                         f"{mean(lambda v: held(v) >= held(plain_zero) - 0.015):.2f} | "
                         f"{top.label()} ({picks.count(top) / len(picks):.0%}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-apart", type=Path, default=HELD_APART,
                    help="the data folder scripts/build_splits.py wrote the held-apart sample to")
    ap.add_argument("--rules-only", action="store_true", help="apply the rules to the saved scores")
    ap.add_argument("--resamples", type=int, default=200, help="random development slices per size and rule")
    a = ap.parse_args(argv)
    if not a.rules_only:
        SCORES.write_text(json.dumps(score_everything(a.held_apart)))
    scores = json.loads(SCORES.read_text())
    TABLES.write_text(tables(scores, [200, 400], a.resamples))
    print(TABLES.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
