"""End to end: the real commands as subprocesses, on the tiny model, into a temporary MLflow store."""

import json
import re
import sqlite3
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY, run_sweep, runs_of

pytestmark = pytest.mark.e2e


def artifacts(run_id: str, path: str = "") -> dict[str, int]:
    """{artifact path: size} under `path`, recursively."""
    client, out = mlflow.MlflowClient(), {}
    for a in client.list_artifacts(run_id, path or None):
        out |= artifacts(run_id, a.path) if a.is_dir else {a.path: a.file_size}
    return out


def test_single_lora_run_records_everything(tracking, tmp_path):
    p = run_sweep(*TINY, *tracking, "train.logging_steps=1")
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "FINISHED"
    assert run["tags.method"] == "lora" and run["tags.seed"] == "0" and run["tags.sweep_id"]
    assert len(run["tags.git_commit"]) == 40 or run["tags.git_commit"] == "unknown"
    assert run["tags.git_dirty"] in ("true", "false")
    assert run["params.lora.r"] == "8" and run["params.train.max_steps"] == "2" and run["params.model.name"] == "tiny"
    for m in ("sst2/acc", "sst2/acc_stderr", "trainable_params", "total_params", "train_seconds",
              "eval_seconds", "train_tokens_per_second", "peak_rss_mb", "train_peak_rss_mb", "eval_peak_rss_mb"):
        assert run[f"metrics.{m}"] >= 0, m
    assert run["metrics.peak_rss_mb"] == max(run["metrics.train_peak_rss_mb"], run["metrics.eval_peak_rss_mb"])
    # MLflow's system metrics, on by default, sampled even in a run shorter than their interval (10 s)
    assert run["metrics.system/cpu_utilization_percentage"] >= 0 and run["metrics.system/system_memory_usage_megabytes"] > 0
    assert 0 < run["metrics.trainable_params"] < run["metrics.total_params"]

    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/loss")
    assert [h.step for h in history] == [1, 2]

    files = artifacts(run["run_id"])
    assert {"config.yaml", "command.txt", "requirements-freeze.txt", "data_sha256.json", "lm_eval_results.json",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(files)
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    local = Path(mlflow.artifacts.download_artifacts(run_id=run["run_id"], dst_path=str(tmp_path)))
    assert "sweep.py" in (local / "command.txt").read_text()
    hashes = json.loads((local / "data_sha256.json").read_text())
    assert {Path(f).name for f in hashes} == {"train.jsonl", "dev.jsonl", "validation.jsonl"}
    results = json.loads((local / "lm_eval_results.json").read_text())
    assert len(results["samples"]["sst2"]) == 8
    # The leakage audit of what this adapter trained on: SST-2 is split by source sentence, so none of its
    # test sentences overlaps a training phrase (tests/test_leakage.py plants one and finds it).
    flagged = json.loads((local / "leakage.json").read_text())["sst2"]
    assert run["metrics.leakage/sst2/scored"] == 8
    assert run["metrics.leakage/sst2/flagged"] == len(flagged) == 0
    assert "lora-r8-a16-qkvo" in p.stdout  # the end-of-run table
    assert_adapter_stands_on_its_own(local / "adapter", run, results["samples"]["sst2"])


def loglikelihoods(samples) -> list[float]:
    return [float(ll) for s in sorted(samples, key=lambda s: s["doc_id"]) for ll, _ in s["filtered_resps"]]


def assert_adapter_stands_on_its_own(adapter: Path, run: dict, logged_samples) -> None:
    """peft's AutoPeftModelForCausalLM and stock lm-eval (`--model hf --model_args
    pretrained=BASE,peft=ADAPTER`) load the downloaded adapter with nothing but its folder, and
    score it as the run logged (the project's task files, lm-eval's own model code)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from peft import AutoPeftModelForCausalLM

    from tests.conftest import ROOT

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base and (Path(base) / "config.json").is_file() and run["tags.base_model_path"] == base
    assert run["tags.base_model"] == "tiny (from_config, seed 0)"
    for model in (f"pretrained={base},peft={adapter}",
                  HFLM(pretrained=AutoPeftModelForCausalLM.from_pretrained(adapter), tokenizer=base, batch_size=8)):
        tasks = TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False,
                            metadata={"data_dir": str(ROOT / "data")})
        out = simple_evaluate(model="hf" if isinstance(model, str) else model, model_args=model if isinstance(model, str)
                              else None, tasks=["sst2"], task_manager=tasks, limit=8, batch_size=8, device="cpu", log_samples=True)
        assert out["results"]["sst2"]["acc,none"] == run["metrics.sst2/acc"]
        # (batches are composed differently: float32 sums agree to about 1e-4 relative)
        assert loglikelihoods(out["samples"]["sst2"]) == pytest.approx(loglikelihoods(logged_samples), rel=1e-3)


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tracking):
    # lr=1e30 makes the loss non-finite at once: that job fails, the next one runs.
    p = run_sweep("-m", *TINY, *tracking, "train.logging_steps=1", "train.max_steps=4", "train.warmup_ratio=0",
                  "train.lr=1e30,1e-3")
    assert p.returncode == 1
    assert "1 of 2 jobs did not finish" in p.stderr and "NonFiniteLossError" in p.stderr
    runs = runs_of(tracking)
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert re.search(r"(training loss|gradient norm) is (nan|inf) at step 2 \(learning rate 7.5e\+29\)", failed["tags.error"])
    assert "traceback.txt" in artifacts(failed["run_id"])
    assert (runs["status"] == "FINISHED").sum() == 1


def test_cfg_job_prints_the_composed_config():
    p = run_sweep("--cfg", "job", "lora.r=2")
    assert p.returncode == 0 and "r: 2" in p.stdout and "target_modules: qkvo" in p.stdout


@pytest.mark.parametrize("overrides,metric", [
    (["data=rte"], "rte/acc"),
    (["data=self_instruct", "eval.limit=2"], "self_instruct/rougeL"),
])
def test_other_tasks_and_methods_run(tracking, overrides, metric):
    p = run_sweep(*TINY, *tracking, *overrides)
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "FINISHED" and 0 <= run[f"metrics.{metric}"] <= 1
    if "method=full" in overrides:
        assert run["metrics.trainable_params"] == run["metrics.total_params"]
        assert not any(a.startswith("adapter") for a in artifacts(run["run_id"]))


def test_every_method_trains_and_is_scored_like_lora(tracking):
    """One multirun over the methods: same data, steps and scoring; each records what it is."""
    methods = ["lora", "qlora", "full", "prompt_tuning", "prefix_tuning", "zero_shot", "few_shot"]
    p = run_sweep("-m", *TINY, *tracking, f"method={','.join(methods)}", "eval.num_fewshot=2",
                  "prompt.num_virtual_tokens=4")
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {r["tags.method"]: r for r in runs_of(tracking).to_dict("records")}
    assert set(runs) == set(methods) and all(r["status"] == "FINISHED" for r in runs.values())
    for method, run in runs.items():
        assert 0 <= run["metrics.sst2/acc"] <= 1 and run["metrics.model_memory_mb"] > 0, method
    trained = [m for m in methods if m not in ("zero_shot", "few_shot")]
    assert len({runs[m]["metrics.train_tokens"] for m in trained}) == 1  # the very same examples
    assert {runs[m]["params.train.max_steps"] for m in trained} == {"2"}
    assert runs["qlora"]["metrics.model_memory_mb"] < runs["lora"]["metrics.model_memory_mb"]
    assert runs["qlora"]["tags.train_optim"] == "adamw_torch"  # paged_adamw_32bit, unpaged on the CPU
    assert "runs as adamw_torch" in p.stdout
    assert runs["qlora"]["params.method.quantization.bnb_4bit_quant_type"] == "nf4"
    assert runs["qlora"]["tags.mlflow.runName"] == "qlora-r8-a16-qkvo-nf4"
    assert runs["prompt_tuning"]["metrics.trainable_params"] == 4 * 64
    assert runs["full"]["metrics.trainable_params"] == runs["full"]["metrics.total_params"]
    for m in ("lora", "qlora", "prompt_tuning", "prefix_tuning"):
        assert "adapter/adapter_model.safetensors" in artifacts(runs[m]["run_id"]), m


def test_lora_budget_experiment_sweeps_seven_weight_types_on_two_tasks(tracking):
    """The experiment as a user runs it: fourteen jobs (seven weight-type sets on two tasks), one step
    each; slow because each job loads, trains and scores (about 4 s a job)."""
    p = run_sweep("-m", "experiment=lora_budget", *TINY, "train.max_steps=1", *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = runs_of(tracking, experiment="lora_budget")
    assert len(runs) == 14 and (runs["status"] == "FINISHED").all()
    assert sorted(runs["tags.tasks"].value_counts().items()) == [("rte", 7), ("sst2", 7)]
    names = set(runs["tags.mlflow.runName"])
    assert names == {"lora-r8-a16-q", "lora-r12-a16-k", "lora-r12-a16-v", "lora-r8-a16-o",
                     "lora-r4-a16-q+k-k6", "lora-r4-a16-q+v-v6", "lora-r2-a16-q+k+v+o-k3-v3"}


def test_baselines_are_scored_once_and_reused_and_compare_with_lora_in_one_table(tracking):
    """Baselines, then a LoRA run in another sweep: the LoRA run's table holds them all. A second
    identical baseline run reuses the first's scores (tagged cached=true with a link) from its
    verified scores file, not from metric rows someone edited in the store; another limit, or
    eval.cache=false, scores afresh. (One store for both proofs: each baseline sweep costs a
    process start and two scoring passes.)"""
    args = ["-m", *TINY, *tracking, "method=zero_shot,few_shot", "eval.num_fewshot=2"]
    first = run_sweep(*args, "tracking.sweep_id=s1")
    assert first.returncode == 0, first.stderr[-3000:]
    lora = run_sweep(*TINY, *tracking, "tracking.sweep_id=s2")
    assert lora.returncode == 0, lora.stderr[-3000:]
    runs = runs_of(tracking)
    assert sorted(runs["tags.method"]) == ["few_shot", "lora", "zero_shot"]
    baselines = runs[runs["tags.method"] != "lora"]
    assert (baselines["metrics.trainable_params"] == 0).all()
    assert baselines["params.train.max_steps"].notna().all()  # the whole config is recorded
    table = lora.stdout[lora.stdout.index("Sweep s2"):]
    for name in ("zero_shot", "few_shot-k2", "lora-r8-a16-qkvo"):
        assert name in table
    scored = {r["run_id"]: r["metrics.sst2/acc"] for r in baselines.to_dict("records")}
    with sqlite3.connect(tracking[0].split("///", 1)[1]) as db:  # a teammate edits the shared store's scores
        for table in ("metrics", "latest_metrics"):
            db.execute(f"UPDATE {table} SET value = 0.999 WHERE key = 'sst2/acc'")
    again = run_sweep(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing the scores of run") == 2
    for extra in (["eval.limit=4"], ["eval.cache=false"]):
        assert run_sweep(*TINY, *tracking, "method=zero_shot", *extra).returncode == 0
    runs = [r for r in runs_of(tracking).to_dict("records") if r["tags.method"] != "lora"]
    fresh, cached, other_limit, no_cache = runs[:2], runs[2:4], runs[4], runs[5]
    for src, hit in zip(fresh, cached):
        assert src["tags.cached"] == "false" and hit["tags.cached"] == "true"
        assert hit["tags.cached_from"] == src["run_id"] and hit["tags.baseline_key"] == src["tags.baseline_key"]
        assert src["metrics.sst2/acc"] == 0.999 and hit["metrics.sst2/acc"] == scored[src["run_id"]] != 0.999
        assert hit["status"] == "FINISHED"
        assert src["run_id"] in hit["tags.mlflow.note.content"]
        assert {"lm_eval_results.json", "config.yaml", "data_sha256.json"} <= set(artifacts(hit["run_id"]))
    assert other_limit["tags.cached"] == "false" and other_limit["tags.baseline_key"] != fresh[0]["tags.baseline_key"]
    assert no_cache["tags.cached"] == "false" and no_cache["tags.baseline_key"] == fresh[0]["tags.baseline_key"]
    # Results edited in the store after their run logged them are not reused.
    for source in (fresh[0], no_cache):
        results = Path(source["artifact_uri"].removeprefix("file://")) / "lm_eval_results.json"
        results.write_text(results.read_text().replace('"acc,none": ', '"acc,none": 0.99 + 0 * ', 1))
    p = run_sweep(*TINY, *tracking, "method=zero_shot")
    assert p.returncode == 0 and p.stdout.count("results or scores do not hash to what it recorded; not reused") == 2
    assert runs_of(tracking).to_dict("records")[-1]["tags.cached"] == "false"


def test_training_without_scoring_logs_step_times(tracking):
    p = run_sweep(*TINY, *tracking, "eval.enabled=false", "train.max_steps=4", "train.logging_steps=2")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "scoring=off (eval.enabled=false)" in p.stdout
    [run] = runs_of(tracking).to_dict("records")
    assert run["status"] == "FINISHED" and "metrics.sst2/acc" not in run and run["tags.torch_threads"] >= "1"
    assert run["tags.train_attention"] == "eager"  # (train.attn_implementation=auto, the CPU, short rows)
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "train/step_seconds")
    assert [h.step for h in history] == [1, 2, 4] and all(h.value > 0 for h in history)


def test_prompt_templates_are_swept_recorded_and_trained_on(tracking):
    p = run_sweep("-m", *TINY, *tracking, "eval.template=default,plain,chat")
    assert p.returncode == 0, p.stderr[-3000:]
    runs = {r["params.eval.template"]: r for r in runs_of(tracking).to_dict("records")}
    assert set(runs) == {"default", "plain", "chat"} and all(r["status"] == "FINISHED" for r in runs.values())
    assert runs["plain"]["tags.mlflow.runName"] == "lora-r8-a16-qkvo-plain"
    for template, start in (("plain", "Review: "), ("chat", "<|im_start|>system\nClassify the sentiment")):
        local = mlflow.artifacts.load_dict(f"runs:/{runs[template]['run_id']}/lm_eval_results.json")
        assert local["samples"]["sst2"][0]["arguments"][0][0].startswith(start)
        assert "sst2" in local["results"]  # named after the task, whichever template scored it


def test_the_strongest_baseline_is_chosen_on_the_development_slice_and_reproducible(tracking):
    """The race on the development slice, its choice reproduced by the equivalent stand-alone run, a
    LoRA run compared with it, and a cache hit: four jobs, each scoring every variant it races."""
    from analysis.summary import summary_text

    search = ["method.search.template=[default,chat]", "method.search.num_fewshot=[0,2]", "data.dev_size=16",
              "method.search.n_startup_steps=4", "eval.fewshot_draws=2", "method.search.oracle=all"]
    p = run_sweep(*TINY, *tracking, "method=strongest_baseline", *search, "tracking.sweep_id=b")
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    panel = mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/baseline_panel.json")
    assert len(panel["variants"]) == 2 * (2 + 4)
    [best] = [v for v in panel["variants"] if v["chosen"]]
    assert panel["chosen"] == best["variant"] == run["tags.baseline.variant"]
    assert run["tags.mlflow.runName"] == f"strongest_baseline={best['variant']}"
    assert run["metrics.dev/sst2/acc"] == pytest.approx(best["dev_mean"])
    assert all("test_mean" in v for v in panel["variants"])  # the oracle: every variant on test (peeking, labelled)
    # Scored exactly as the equivalent stand-alone baseline run scores it, on development and test examples.
    again = run_sweep(*TINY, *tracking, *run["tags.baseline.reproduce"].split(), "eval.fewshot_draws=2",
                      "tracking.sweep_id=b2")
    assert again.returncode == 0, again.stderr[-3000:]
    twin = runs_of(tracking).iloc[-1]
    assert twin["metrics.sst2/acc"] == run["metrics.sst2/acc"] and twin["tags.mlflow.runName"] == best["variant"]
    assert twin["metrics.dev/sst2/acc"] == pytest.approx(run["metrics.dev/sst2/acc"])
    # A LoRA run's table compares it with the strongest baseline and the same-template zero-shot one,
    # gives its verdict (also in the run's tags) and how far the honest baseline is from the oracle.
    lora = run_sweep(*TINY, *tracking, "data.dev_size=16", "tracking.sweep_id=l")
    table = lora.stdout[lora.stdout.index("Sweep l"):]
    assert "vs strongest" in table and f"strongest_baseline={best['variant']}" in table
    assert run["tags.baseline.search"] == ("the best on development data of 12 prompting variants (templates default, "
                                           "chat; k 0, 2; demonstrations random, balanced; calibration off, on)")
    assert f"vs strongest_baseline={best['variant']}, {run['tags.baseline.search']};" in table  # the claim names it
    assert "the strongest, chosen on a development slice, is strongest_baseline=" in table
    assert "Primary claim on sst2/acc: the adapter chosen on development data (lora-r8-a16-qkvo" in table
    assert "Peeking" not in table  # (the oracle's line only with analysis.summary --peek)
    adapter = runs_of(tracking).iloc[-1]
    assert adapter["tags.verdict.sst2/acc"] in ("better", "worse", "equivalent", "inconclusive")
    assert adapter["tags.verdict.sst2/acc.role"] == "primary"
    assert f"\n  {adapter['tags.verdict.sst2/acc']}" in table and "a claim about this adapter" in table
    peeked = summary_text(tracking[0].split("=", 1)[1], "sft-sweep", "l", peek=True)
    assert "Peeking (not a result): the best of the 12 baseline variants" in peeked
    # The same search again is served by the baseline cache, chosen variant and panel included.
    cached = run_sweep(*TINY, *tracking, "method=strongest_baseline", *search)
    assert "reusing the scores of run" in cached.stdout
    hit = runs_of(tracking).iloc[-1]
    assert hit["tags.cached"] == "true" and hit["tags.baseline.variant"] == best["variant"]
    assert hit["tags.mlflow.runName"] == run["tags.mlflow.runName"]


def test_a_grid_registers_its_best_adapter_with_its_alias_and_it_loads_back_with_mlflows_api(tracking, tmp_path):
    """A grid with tracking.register_best=true: the sweep's best adapter by development score becomes a version
    of `sft-sweep-sst2` with the alias champion, pointing at that FINISHED run, tagged with what it is, holding
    its adapter and a reference to its base, and mlflow.transformers.load_model gives a model that scores as the
    run did; `make promote`
    refuses a run that did not finish."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from analysis.runs import best_by_dev, sweep_runs
    from sweep.ops import promote
    from sweep.training.models import weights_digest
    from tests.conftest import ROOT

    p = run_sweep("-m", *TINY, *tracking, "lora.r=1,2", "tracking.register_best=true")
    assert p.returncode == 0, p.stderr[-3000:]
    uri = tracking[0].split("=", 1)[1]
    mlflow.set_tracking_uri(uri)
    runs = runs_of(tracking)
    # A grid: one sweep id for its jobs, and the end-of-sweep table.
    assert sorted(runs["params.lora.r"]) == ["1", "2"]
    assert runs["tags.sweep_id"].nunique() == 1 and (runs["status"] == "FINISHED").all()
    by_r = dict(zip(runs["params.lora.r"], runs["metrics.trainable_params"]))
    assert by_r["2"] == 2 * by_r["1"]
    assert "lora-r1-a16-qkvo" in p.stdout and "lora-r2-a16-qkvo" in p.stdout and "sst2/acc" in p.stdout
    chosen = best_by_dev(sweep_runs("sft-sweep", runs["tags.sweep_id"].iloc[0]), "sst2/acc")
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("sft-sweep-sst2", "champion")
    assert version.run_id == chosen["run_id"] and client.get_run(version.run_id).info.status == "FINISHED"
    assert version.tags["base_model"] == "tiny (from_config, seed 0)" and version.tags["method"] == "lora"
    assert set(version.tags) >= {"data_sha256.train.jsonl", "data_sha256.validation.jsonl"}
    assert version.description  # the verdict line, or that none was recorded
    # The version is the adapter and a reference to its base (the folder the run trained on, by its sha256).
    stored = {a.path for a in client.list_artifacts(version.run_id, "registered_model/peft")}
    assert "registered_model/peft/adapter_model.safetensors" in stored
    assert not client.list_artifacts(version.run_id, "registered_model/model")  # no copy of the base's weights
    assert version.tags["base_model_sha256"] == weights_digest(version.tags["base_model_path"])

    loaded = mlflow.transformers.load_model("models:/sft-sweep-sst2@champion", return_type="components")
    tasks = TaskManager(include_path=str(ROOT / "tasks"), include_defaults=False, metadata={"data_dir": str(ROOT / "data")})
    out = simple_evaluate(model=HFLM(pretrained=loaded["model"], tokenizer=loaded["tokenizer"], batch_size=8),
                          tasks=["sst2"], task_manager=tasks, limit=8, batch_size=8, device="cpu")
    assert out["results"]["sst2"]["acc,none"] == chosen["metrics.sst2/acc"]

    unfinished = client.create_run(runs["experiment_id"].iloc[0]).info.run_id  # (RUNNING)
    assert promote.main([unfinished, "--tracking-uri", uri]) == 2
    assert len(client.search_model_versions("name='sft-sweep-sst2'")) == 1
