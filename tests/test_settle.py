"""`eval.sequential=true` end to end: the jobs defer their test pass, settle.py scores the chosen
adapter's and strongest baseline's test examples block by block and stops when the verdict is
decided, each example scored as the fixed-size pass scores it."""

import mlflow
import pytest

from tests import forked
from tests.conftest import ROOT, TINY, clean_env, run_sweep, runs_of

pytestmark = pytest.mark.e2e

SEARCH = ["method=strongest_baseline", "method.search.template=[default]", "method.search.num_fewshot=[2]",
          "method.search.n_startup_steps=4", "eval.fewshot_draws=2"]
# 32 test examples in blocks of 4; a margin this wide is decided as soon as the sequence narrows
# inside it (about 8 examples): the tiny model's arms are both near chance.
READING = ["eval.limit=32", "eval.sequential_block=4", "eval.margin=0.9", "data.dev_size=16"]


def by_id(run_id: str) -> dict[int, float]:
    results = mlflow.artifacts.load_dict(f"runs:/{run_id}/lm_eval_results.json")
    return {s["doc_id"]: s["acc"] for s in results["samples"]["sst2"]}


def settle(*args: str):
    return forked.run(["settle.py", *args], ROOT, clean_env(), timeout=600)


def test_a_deferred_sweep_is_settled_in_blocks_scoring_each_example_as_the_fixed_pass_does(tracking, monkeypatch):
    import settle as command
    from analysis.sequential import order
    from sweep.pipeline.deferred import DeferredRun

    uri = tracking[0].split("=", 1)[1]
    said = {}
    for sweep, sequential in (("seq", "true"), ("fixed", "false")):
        for job in (SEARCH, ["lora.r=2"]):
            p = run_sweep(*TINY, *tracking, *READING, *job, f"eval.sequential={sequential}",
                          f"tracking.sweep_id={sweep}")
            assert p.returncode == 0, p.stderr[-3000:]
            said[sweep] = p.stdout
    runs = runs_of(tracking)
    deferred = runs[runs["tags.sweep_id"] == "seq"]
    assert (deferred["tags.test_pass"] == "deferred").all() and "metrics.dev/sst2/acc" in deferred
    assert deferred["metrics.sst2/acc"].isna().all()  # (no test example scored by the jobs)
    assert "2 run(s) deferred their test pass (eval.sequential=true): python settle.py --experiment sft-sweep " \
           "--sweep-id seq scores" in said["seq"] and "settle.py" not in said["fixed"]

    confirmed = forked.run(["confirm.py", "--experiment", "sft-sweep", "--sweep-id", "seq", "--seeds", "1",
                            "--tracking-uri", uri], ROOT, clean_env(), timeout=600)  # (a second seed, deferred too)
    assert confirmed.returncode == 0, confirmed.stderr[-3000:]
    # A failure while recording the claim's runs leaves every one of them to settle again.
    record = DeferredRun.record

    def store_fails_at_the_baseline(arm):
        if arm.name.startswith("strongest_baseline"):
            raise OSError("the store went away")
        return record(arm)

    monkeypatch.setattr(DeferredRun, "record", store_fails_at_the_baseline)
    mlflow.set_tracking_uri(uri)
    with pytest.raises(OSError, match="the store went away"):
        command.settle("sft-sweep", "seq")
    monkeypatch.setattr(DeferredRun, "record", record)
    assert (runs_of(tracking).query("`tags.sweep_id` == 'seq'")["tags.test_pass"] == "deferred").all()
    s = settle("--experiment", "sft-sweep", "--sweep-id", "seq", "--tracking-uri", uri)
    assert s.returncode == 0, s.stderr[-3000:]
    settled = runs_of(tracking)
    settled = settled[settled["tags.sweep_id"] == "seq"]
    seed = settled[settled["tags.confirms"].notna()]
    settled = settled[settled["tags.confirms"].isna()].set_index("tags.method")
    used = int(settled.loc["lora", "metrics.sst2/n_samples"])
    assert 4 <= used < 32 and used % 4 == 0  # (stopped at a block's end, before the test examples ran out)
    assert f"sequential: equivalent after {used} of 32 test examples (blocks of 4" in s.stdout
    assert (settled["tags.test_pass"] == "settled").all() and (settled["status"] == "FINISHED").all()
    assert sorted(by_id(seed["run_id"].iloc[0])) == sorted(by_id(settled.loc["lora", "run_id"]))  # (both seeds read)
    assert "test sst2/acc: " in s.stdout and "(mean ± sd over 2 training seeds)" in s.stdout
    fixed = runs_of(tracking)
    fixed = fixed[fixed["tags.sweep_id"] == "fixed"].set_index("tags.method")
    for method in ("lora", "strongest_baseline"):  # the examples read first, each scored as the fixed pass did
        read = by_id(settled.loc[method, "run_id"])
        assert sorted(read) == sorted(int(i) for i in order(32, 0)[:used])
        assert read == {i: a for i, a in by_id(fixed.loc[method, "run_id"]).items() if i in read}
    assert settled.loc["strongest_baseline", "tags.baseline.variant"] == fixed.loc["strongest_baseline",
                                                                                   "tags.baseline.variant"]
    assert settled.loc["lora", "tags.verdict.sst2/acc"] == "equivalent"  # (recorded by the summary it printed)

    again = settle("--experiment", "sft-sweep", "--sweep-id", "seq", "--tracking-uri", uri)
    assert again.returncode == 2 and "was settled already" in again.stderr.strip().splitlines()[-1]
