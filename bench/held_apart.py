"""Does the claimed gain hold on sentences that are not in this repository? The primary claim of a
sweep (the adapter its development scores chose, with its confirming seeds, against the baseline
they chose) scored again on the held-apart sample of full SST-2 sentences that scripts/build_splits.py
writes outside the repository (never bundled, never read by a choice), and set beside the claim.

    python scripts/build_splits.py            # once: .cache/held_apart
    python bench/held_apart.py --experiment quickstart --sweep-id ID   # about 2 min a model on 2 cores

Each adapter is scored as it trained (its template, merged into the base: `method=zero_shot
init.run_id=<run>`), the baseline as it was chosen (its `baseline.reproduce` overrides), every
held-apart sentence (`eval.limit=null`), into the experiment `<name>-held-apart`. Prints both
comparisons (analysis/verdict.py, the same procedure and level) and whether the held-apart gain lies
inside the claim's interval; writes bench/held_apart.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis import verdict  # noqa: E402
from analysis.runs import best_by_dev, confirmations, sweep_runs, template  # noqa: E402
from analysis.stats import samples  # noqa: E402
from analysis.summary import (  # noqa: E402
    References,
    group_key,
    main_metrics,
    margin_of,
    references,
    sweep_verdicts,
)
from sweep.config import default_tracking_uri  # noqa: E402

HELD_APART = ROOT / ".cache" / "held_apart"
OUT = ROOT / "bench" / "held_apart.json"


def score(overrides: list[str], uri: str, experiment: str, name: str, held: Path) -> str:
    """Run `python sweep.py` on the held-apart sentences (unless a finished run of this name is there
    from an earlier call); the run's id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name)  # (a run name is a Hydra override value here)
    sweep_id = f"{experiment}-{name}"

    def finished():
        if mlflow.get_experiment_by_name(experiment) is None:
            return None
        runs = mlflow.search_runs(experiment_names=[experiment], order_by=["start_time DESC"],
                                  filter_string=f"tags.sweep_id = '{sweep_id}' and attributes.status = 'FINISHED'")
        return None if runs.empty else runs.iloc[0]["run_id"]

    if finished() is None:
        subprocess.run([sys.executable, str(ROOT / "sweep.py"), *overrides, f"paths.data={held}", "eval.limit=null",
                        "data.dev_size=0", f"tracking.uri={uri}", f"tracking.experiment={experiment}",
                        f"tracking.run_name={name}", f"tracking.sweep_id={sweep_id}"], check=True, cwd=ROOT)
    return finished()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True)
    p.add_argument("--sweep-id", required=True)
    p.add_argument("--config", help="the experiment= config the sweep composed (default: --experiment)")
    p.add_argument("--held-apart", type=Path, default=HELD_APART)
    p.add_argument("--tracking-uri", default=default_tracking_uri())
    a = p.parse_args(argv)
    if not (a.held_apart / "sst2" / "validation.jsonl").is_file():
        print(f"error: no held-apart sample in {a.held_apart}: run python scripts/build_splits.py first", file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(a.tracking_uri)
    runs = sweep_runs(a.experiment, a.sweep_id)
    metric = main_metrics(runs)[0]
    task, name = metric.split("/", 1)
    chosen = best_by_dev(runs, metric)
    baseline = references(runs, metric).get(group_key(chosen), References()).strongest
    claim = next(c for c in sweep_verdicts(runs) if c.role == verdict.PRIMARY and c.metric == metric)
    seeds = [chosen, *confirmations(runs, chosen["run_id"])]
    experiment = f"{a.experiment}-held-apart"
    base = [f"experiment={a.config or a.experiment}"]
    adapters = [score([*base, "method=zero_shot", f"init.run_id={r['run_id']}", f"eval.template={template(r)}",
                       f"seed={r['params.seed']}"], a.tracking_uri, experiment, f"{r['tags.mlflow.runName']}", a.held_apart)
                for r in seeds]
    reference = score([*base, *baseline["tags.baseline.reproduce"].split()], a.tracking_uri, experiment,
                      baseline["tags.mlflow.runName"], a.held_apart)
    held = verdict.compare(chosen["run_id"], chosen["tags.mlflow.runName"], metric, baseline["tags.mlflow.runName"],
                           [samples(r, task, name) for r in adapters], samples(reference, task, name),
                           margin_of(chosen))
    held = verdict.corrected([held] * claim.family)[0]
    low, high = claim.interval
    inside = low <= held.diff <= high
    lines = [f"claim on the project's test examples: {claim.sentence()}",
             f"the same two on {held.n} held-apart sentences: {held.sentence()}",
             f"held-apart gain {held.diff:+.3f} {'inside' if inside else 'OUTSIDE'} the claim's interval "
             f"[{low:+.3f}, {high:+.3f}]"]
    print("\n".join(lines))
    OUT.write_text(json.dumps({
        "experiment": a.experiment, "sweep_id": a.sweep_id, "metric": metric, "adapter": chosen["tags.mlflow.runName"],
        "baseline": baseline["tags.mlflow.runName"], "seeds": len(seeds),
        "test": {"n": claim.n, "diff": claim.diff, "interval": claim.interval, "level": claim.level,
                 "adapter_mean": sum(claim.seed_means) / len(claim.seed_means)},
        "held_apart": {"n": held.n, "diff": held.diff, "interval": held.interval, "level": held.level,
                       "adapter_mean": sum(held.seed_means) / len(held.seed_means),
                       "baseline_mean": sum(samples(reference, task, name).values()) / held.n},
        "inside": inside, "lines": lines}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
