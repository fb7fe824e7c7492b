"""Comparison reports and reproduction, on a store filled by real tiny-model runs."""

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from analysis import report
from analysis.stats import mcnemar_exact, paired_compare
from sweep.vocabulary import STUDY_METHOD
from tests import forked
from tests.conftest import (
    ROOT,
    TINY,
    clean_env,
    headless_chromium,
    optuna_args,
    run_sweep,
    runs_of,
)

pytestmark = pytest.mark.e2e
SEARCH = ["method.search.template=[default,plain]", "method.search.num_fewshot=[0,2]", "data.dev_size=16",
          "method.search.n_startup_steps=4", "eval.fewshot_draws=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Baselines, a 2x2 grid over r and alpha, two LoRA-budget presets, a failed run and a small
    Optuna study, all in one experiment."""
    tmp = tmp_path_factory.mktemp("store")
    tracking = [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_location={tmp}/artifacts"]
    for args in (["-m", "method=zero_shot,few_shot", "eval.num_fewshot=2"],
                 ["method=strongest_baseline", *SEARCH],
                 ["-m", "lora.r=2,4", "lora.alpha=8,16"],
                 ["-m", "lora=budget_q,budget_qkvo"]):
        p = run_sweep(*args, *TINY, *tracking)
        assert p.returncode == 0, p.stderr[-3000:]
    p = run_sweep(*TINY, *tracking, "debug.fail_at_step=1")
    assert p.returncode != 0
    p = run_sweep(*optuna_args(tmp, "hydra.sweeper.n_trials=2", "lora.r=choice(1,2)"), *tracking)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp, tracking


def make_report(store, *extra) -> tuple[int, Path]:
    tmp, tracking = store
    out = tmp / f"report{len(list(tmp.glob('report*')))}"
    uri = tracking[0].split("=", 1)[1]
    rc = report.main(["--experiment", "sft-sweep", "--tracking-uri", uri, "--out", str(out), *extra])
    return rc, out


def test_report_has_the_expected_rows_numbers_and_images(store):
    """The report of the recorded store: rows, numbers and plots. Slow in its setup: the `store` fixture
    records every kind of run the report shows (about a dozen jobs), shared by the file's report tests."""
    rc, out = make_report(store)
    assert rc == 0
    runs = runs_of(store[1])
    done = runs[(runs["status"] == "FINISHED") & (runs["tags.method"] != STUDY_METHOD)]
    md = (out / "report.md").read_text()
    # Every finished run is a row, with its template, its development and its test accuracy, the chosen run first.
    for _, r in done.iterrows():
        acc = f"{r['metrics.sst2/acc']:.3f} ± {r['metrics.sst2/acc_stderr']:.3f}"
        template = r["tags.baseline.template"] if r["tags.method"] == "strongest_baseline" else r["params.eval.template"]
        assert f"| {r['tags.mlflow.runName']} | {r['tags.method']} | {template} | {r['metrics.dev/sst2/acc']:.3f} | {acc} |" in md
    # Paired differences against the strongest baseline (chosen on the development slice) and the
    # zero-shot baseline with the same template, never against the best baseline on this split.
    strongest = done[done["tags.method"] == "strongest_baseline"].iloc[0]
    zero = done[done["tags.method"] == "zero_shot"].iloc[0]
    lora = done[done["tags.mlflow.runName"] == "lora-r2-a8-qkvo"].iloc[0]
    vs_strongest = lora["metrics.sst2/acc"] - strongest["metrics.sst2/acc"]
    vs_zero = lora["metrics.sst2/acc"] - zero["metrics.sst2/acc"]
    row = next(line for line in md.splitlines() if line.startswith("| lora-r2-a8-qkvo |"))
    assert f"| {vs_strongest:+.3f} ({strongest['tags.mlflow.runName']}) |" in row
    assert f"| {vs_zero:+.3f} (zero_shot) |" in row and "n=8)" in row
    assert strongest["tags.mlflow.runName"].startswith("strongest_baseline=")
    # The spread of the baseline variants, and the development panel with the chosen variant.
    values = done[done["tags.method"].isin(["zero_shot", "few_shot", "strongest_baseline"])]["metrics.sst2/acc"]
    assert f"sst2/acc: 3 baseline variant(s) span {values.min():.3f} to {values.max():.3f}" in md
    assert "## Baseline variants on the development slice" in md
    assert md.count("| yes |") == 1 and "| few_shot-k2-balanced-plain | sst2 |" in md
    shares = done["metrics.sst2/top_prediction_share"]
    assert ("degenerate" in md) == bool((shares > 0.9).any())
    # Failed runs are counted, not dropped.
    assert "1 FAILED" in md and "## Runs that did not finish" in md and "InjectedFailure" in md
    # The LoRA-budget presets appear in Table 5's layout.
    assert "| rank r | 8 | 2/3/3/2 |" in md and "|  | Wq | Wq, Wk, Wv, Wo |" in md
    from analysis.runs import best_by_dev

    trained = done[~done["tags.method"].isin(["zero_shot", "few_shot", "strongest_baseline"])].reset_index(drop=True)
    best_run = best_by_dev(done.reset_index(drop=True), "sst2/acc")  # by development score, ties to fewer parameters
    assert f"## Best run\n\n{best_run['tags.mlflow.runName']} ({best_run['run_id']}), chosen by its development score" in md
    # The verdict opens the report: one primary claim (the chosen adapter vs the chosen baseline), then the
    # other adapters as secondary comparisons, corrected among themselves.
    assert md.split("\n\n")[1].startswith(f"Primary claim on sst2/acc: the adapter chosen on development data "
                                           f"({best_run['tags.mlflow.runName']}")
    assert "a claim about this adapter (one training seed)" in md and "| verdict interval | verdict |" in md
    table = md[md.index("## sst2/acc: every run against the baselines"):]
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[4:] if line.startswith("| ")]
    assert rows[0] == best_run["tags.mlflow.runName"]  # (the chosen run first, then by development score)
    assert f"Bonferroni over {len(trained) - 1}; sorted by development score" in md
    assert f"`python reproduce.py {best_run['run_id']}`" in md
    # The leakage audit: the chosen adapter's flagged test examples and its verdict on the clean ones too.
    audit = next(line for line in md.splitlines() if line.startswith("| sst2/acc | "))
    flags = json.loads(mlflow.artifacts.load_text(f"runs:/{best_run['run_id']}/leakage.json"))["sst2"]
    scored = int(best_run["metrics.leakage/sst2/scored"])
    assert f"| {sum(f['doc_id'] < scored for f in flags)} of {scored} |" in audit and "## Leakage audit" in md
    clean = scored - sum(f["doc_id"] < scored for f in flags)
    assert f"| {clean} (label " in audit  # (the clean subset's size and its gold labels)
    # Which settings mattered: each swept setting of the adapters, with its interval beyond its shadow.
    assert "## sst2/acc: which settings mattered (development scores)" in md
    assert all(f"| {key} | " in md for key in ("lora.r", "lora.alpha", "lora.target_modules"))
    pngs = {p.name for p in out.glob("*.png")}
    assert {"sst2_acc_vs_rank_r.png", "sst2_acc_vs_alpha.png", "sst2_acc_vs_trainable_parameters.png",
            "training_loss.png", "optuna_study_study__optimization_history.png", "system_utilisation.png",
            "sst2_acc__which_settings_mattered.png"} <= pngs
    html = (out / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(pngs) and "<table" in html
    csv = pd.read_csv(out / "runs.csv")
    assert set(csv["run_id"]) == set(runs[runs["tags.method"] != STUDY_METHOD]["run_id"].where(
        runs["status"] == "FINISHED").dropna()) and set(csv["task"]) == {"sst2"}


def test_a_sweep_id_narrows_the_report_to_that_sweep_and_the_baselines(store):
    runs = runs_of(store[1])
    grid = runs[runs["params.lora.alpha"] == "8"].iloc[0]["tags.sweep_id"]
    rc, out = make_report(store, "--sweep-id", grid)
    assert rc == 0
    csv = pd.read_csv(out / "runs.csv")
    assert set(csv["method"]) == {"zero_shot", "few_shot", "strongest_baseline", "lora"}
    assert len(csv[(csv.method == "lora") & (csv.metric == "acc") & (csv.split == "test")]) == 4
    assert len(csv[(csv.method == "lora") & (csv.metric == "acc") & (csv.split == "development")]) == 4


@pytest.mark.parametrize("case,needle", [
    ("missing", "error: no tracking store at sqlite:///"),
    ("empty", "holds no experiments yet: run `make run`"),
    ("unknown", "no MLflow experiment named 'sft-swep' at sqlite:///"),
    ("only_failed", "has no finished runs with scores yet (1 FAILED)"),
])
def test_nothing_to_report_is_one_clear_line(tmp_path, capsys, case, needle):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = "sft-sweep"
    if case == "empty":
        from sweep.tracking.store import init_store

        init_store(uri)
    elif case == "unknown":
        experiment = "sft-swep"
        p = run_sweep(*TINY, "method=zero_shot", f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/a")
        assert p.returncode == 0
    elif case == "only_failed":
        p = run_sweep(*TINY, "debug.fail_at_step=1", f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/a")
        assert p.returncode != 0
    capsys.readouterr()  # (the set-up's own output)
    rc = report.main(["--experiment", experiment, "--tracking-uri", uri, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    if case == "unknown":
        assert "(did you mean: sft-sweep?)" in err


def test_mcnemar_and_bootstrap():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 2**10)
    a = {i: 1.0 for i in range(30)}
    b = {i: float(i % 3 == 0) for i in range(30)}
    pair = paired_compare(a, b)
    assert pair.test == "McNemar" and pair.n == 30 and pair.diff == pytest.approx(20 / 30)
    assert pair.ci_low > 0 and pair.p_value == pytest.approx(2 / 2**20)
    rouge = paired_compare({i: 0.5 + i / 100 for i in range(20)}, {i: 0.5 for i in range(20)})
    assert rouge.test == "paired permutation" and rouge.p_value < 0.01
    assert paired_compare({1: 1.0}, {2: 1.0}) is None


def test_html_report_renders_in_a_real_browser(store):
    """Headless Chromium: no console errors, every image decoded and shown, and the screenshot is
    not blank."""
    rc, out = make_report(store)
    assert rc == 0
    with headless_chromium(out / "chrome-profile") as driver:
        driver.get((out / "index.html").as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        shot = out / "screenshot.png"
        driver.save_screenshot(str(shot))
    assert errors == []
    assert len(images) >= 5 and all(done and width > 100 and shown > 100 for done, width, shown in images)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 500 and pixels[..., :3].std() > 0.05  # text, tables and plots, not a blank page


# --- reproduce.py ---------------------------------------------------------------------------------

def reproduce(*args) -> subprocess.CompletedProcess:
    """`python reproduce.py ARGS`, forked from a process that imported the libraries (tests/forked.py)."""
    return forked.run(["reproduce.py", *args], ROOT, clean_env(), timeout=600)


@pytest.fixture
def one_run(tmp_path, tracking):
    """A tiny LoRA run that reads a copy of the data (so the test may edit it)."""
    shutil.copytree(ROOT / "data", tmp_path / "data")
    p = run_sweep(*TINY, *tracking, f"paths.data={tmp_path}/data", "train.logging_steps=1")
    assert p.returncode == 0, p.stderr[-3000:]
    [run] = runs_of(tracking).to_dict("records")
    return run, tracking[0].split("=", 1)[1], tmp_path / "data"


def test_reproduce_gives_identical_metrics_and_tags_the_new_run(one_run):
    run, uri, _ = one_run
    p = reproduce(run["run_id"], "--tracking-uri", uri)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "identical: run " in p.stdout and "sst2/acc " in p.stdout and "train/loss@2" in p.stdout
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["sft-sweep"])
    new = runs[runs["tags.reproduces"] == run["run_id"]].iloc[0]
    assert new["tags.reproduce_match"] == "true"
    for m in ("sst2/acc", "train/loss", "trainable_params", "train_tokens"):
        assert new[f"metrics.{m}"] == run[f"metrics.{m}"], m


def plant(uri: str, run: dict, config=None, hashes=None, files=()) -> str:
    """A FINISHED run written into the store by someone else: the given run's config.yaml (edited
    by `config(text)`), data hashes and extra artifacts, at this checkout's commit."""
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    text = mlflow.artifacts.load_text(f"runs:/{run['run_id']}/config.yaml")
    planted = client.create_run(run["experiment_id"], tags={"git_commit": run["tags.git_commit"],
                                                            "git_dirty": "false"}, run_name="planted")
    rid = planted.info.run_id
    client.log_text(rid, config(text) if config else text, "config.yaml")
    client.log_dict(rid, hashes if hashes is not None else
                    mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/data_sha256.json"),
                    "data_sha256.json")
    for name, body in files:
        client.log_text(rid, body, name)
    client.set_terminated(rid, "FINISHED")
    return rid


def test_reproduce_warns_about_changed_or_unrecorded_data_and_refuses_with_strict(one_run):
    run, uri, _ = one_run
    before = len(runs_of([f"tracking.uri={uri}"]))
    mlflow.set_tracking_uri(uri)
    recorded = mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/data_sha256.json")
    stale = plant(uri, run, hashes=dict.fromkeys(recorded, "0" * 64))
    p = reproduce(stale, "--tracking-uri", uri, "--strict")
    assert p.returncode == 2 and "WARN  data: " in p.stdout and "differs from what the run read" in p.stdout
    assert "refused (--strict)" in p.stdout
    unrecorded = plant(uri, run, hashes={})  # an empty record must not pass as "nothing changed"
    p = reproduce(unrecorded, "--tracking-uri", uri, "--strict")
    assert p.returncode == 2 and "the run recorded no hash for" in p.stdout and "refused (--strict)" in p.stdout
    assert len(runs_of([f"tracking.uri={uri}"])) == before + 2  # nothing re-ran
    p = reproduce(stale, "--tracking-uri", uri)
    assert "WARN  data: " in p.stdout and "re-running" in p.stdout


def test_reproduce_takes_hyperparameters_not_code_from_a_crafted_run(one_run, tmp_path):
    """The attack of issue 15: a planted run whose own artifacts hold a task YAML and a Python hook,
    with eval.include_paths pointing at them. Nothing of it runs; each planted value is refused by name."""
    run, uri, _ = one_run
    marker = tmp_path / "executed"
    hook = f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\ndef doc(x):\n    return x\n"
    task = "task: sst2\ndataset_path: json\noutput_type: multiple_choice\ndoc_to_text: !function evil.doc\n"
    before = len(runs_of([f"tracking.uri={uri}"]))
    evil = plant(uri, run, files=[("tasks/evil.py", hook), ("tasks/sst2.yaml", task)])
    folder = mlflow.artifacts.download_artifacts(f"runs:/{evil}/tasks", tracking_uri=uri, dst_path=str(tmp_path / "a"))
    cases = {
        "eval.include_paths": lambda t: t.replace("include_paths: []", f"include_paths:\n  - {folder}"),
        "model.trust_remote_code": lambda t: t.replace("trust_remote_code: false", "trust_remote_code: true"),
        "model.name_or_path": lambda t: t.replace("name_or_path: null", f"name_or_path: {folder}", 1),
        "interpolation at train.lr": lambda t: t.replace("  lr: 0.001", "  lr: ${oc.env:HOME}"),
        "train.no_such_key": lambda t: t.replace("  lr: 0.001", "  lr: 0.001\n  no_such_key: 1"),
        # generated data named by a file on the recording machine (a run id would be taken)
        "data.generated": lambda t: t.replace("data:\n  name: sst2\n  task: sst2\n",
                                              "data:\n  name: self_instruct\n  task: self_instruct\n"
                                              f"  generated: {folder}/evil.py\n  mix: 0.5\n"),
    }
    for expected, edit in cases.items():
        crafted = plant(uri, run, config=edit)
        p = reproduce(crafted, "--tracking-uri", uri, "--strict")
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, expected
        assert expected in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not marker.exists()
    # A key today's config lacks cannot be allowed: --allow names it a typo before anything is read.
    crafted = plant(uri, run, config=cases["train.no_such_key"])
    p = reproduce(crafted, "--tracking-uri", uri, "--allow", "train.no_such_key")
    assert p.returncode == 2 and "--allow train.no_such_key: no such config key" in p.stderr
    assert not marker.exists() and len(runs_of([f"tracking.uri={uri}"])) == before + 2 + len(cases)


def test_reproduce_an_optuna_trial(store):
    tmp, tracking = store
    uri = tracking[0].split("=", 1)[1]
    p = reproduce("--from-optuna", "study", "--tracking-uri", uri)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    p = reproduce("--from-optuna", "study:7", "--tracking-uri", uri)
    assert p.returncode == 2 and "no finished trial 7" in p.stderr


def test_reproduce_bad_input_is_one_line(tmp_path, one_run):
    p = reproduce("0123456789abcdef", "--tracking-uri", f"sqlite:///{tmp_path}/nothing/mlflow.db")
    assert p.returncode == 2 and p.stderr == f"error: no tracking store at sqlite:///{tmp_path}/nothing/mlflow.db: " \
        "run `make run` or `python sweep.py` first, or pass --tracking-uri\n"
    assert not (tmp_path / "nothing").exists()
    p = reproduce("0123456789abcdef", "--tracking-uri", one_run[1])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: Run with id=0123456789abcdef not found"


@pytest.mark.parametrize("case", ["trial number", "study name", "mathtext", "panel"])
def test_crafted_store_values_give_a_report_not_a_traceback(store, tmp_path, case):
    """Store values no run writes, each once on a copy of the store: a trial number `abc` (and one of
    400 digits), a 300-character study name (a figure's file name), run names that break matplotlib's
    mathtext, a baseline panel of the wrong shape. The report is written; the crafted part is left
    out or drawn as text (before: ValueError, OverflowError, OSError, ParseSyntaxException, TypeError)."""
    tmp, tracking = store
    shutil.copy(tmp / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = runs_of([f"x={uri}"])
    client = mlflow.MlflowClient(tracking_uri=uri)
    trials = runs[runs["tags.optuna.trial_number"].notna()] if "tags.optuna.trial_number" in runs else runs.iloc[0:0]
    parent = runs[runs["tags.method"] == STUDY_METHOD]
    assert len(trials) == 2 and len(parent) == 1
    panel, before = None, None
    if case == "trial number":
        client.set_tag(trials.iloc[0]["run_id"], "optuna.trial_number", "abc")
        client.set_tag(trials.iloc[1]["run_id"], "optuna.trial_number", "9" * 400)
    elif case == "study name":
        for run_id in [*trials["run_id"], *parent["run_id"]]:
            client.set_tag(run_id, "optuna.study_name", "s" * 300)
    elif case == "mathtext":
        client.set_tag(trials.iloc[0]["run_id"], "mlflow.runName", r"$\frac{1")
        client.set_tag(trials.iloc[1]["run_id"], "mlflow.runName", "a$^^$b")
    else:
        strongest = runs[runs["tags.method"] == "strongest_baseline"].iloc[0]
        panel = Path(strongest["artifact_uri"].removeprefix("file://")) / "baseline_panel.json"
        before = panel.read_text()
        panel.write_text(json.dumps({"variants": ["x", {"variant": 1}, {"variant": "v", "task": "sst2", "metric": "acc",
                                                                      "dev_mean": "high", "chosen": "yes"}]}))
    try:
        rc = report.main(["--experiment", "sft-sweep", "--tracking-uri", uri, "--out", str(tmp_path / "report")])
    finally:
        if panel is not None:
            panel.write_text(before)
    assert rc == 0
    md = (tmp_path / "report" / "report.md").read_text()
    if case == "study name":
        assert all(len(p.name) <= 84 for p in (tmp_path / "report").glob("*.png"))
        assert "optimization history" in md
    if case == "mathtext":  # (the loss curves are labelled with the run names)
        assert "![training loss](training_loss.png)" in md
    if case == "panel":  # (no row has its fields' types: no panel table)
        assert "Baseline variants on the development slice" not in md
    if case == "trial number":  # (the trials with a number left out, the study has no history left to draw)
        assert "optimization history" not in md


EVIL = ('<script>alert(1)</script><img src=x onerror=alert(1)><iframe src="https://evil.example"></iframe>'
        '[click](javascript:alert(1)) ![t](https://evil.example/p.png) *x* | y')


def test_store_text_stays_text_in_the_markdown_and_the_csv(store):
    """A teammate's run name and recorded command holding HTML, links, remote images, a broken code
    span and spreadsheet formulas: rendered as CommonMark (with GFM tables, as GitHub does), the
    report is the same text and nothing live. (Runs last in this file: it edits the store.)"""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    _, tracking = store
    runs = runs_of(tracking)
    done = runs[(runs["status"] == "FINISHED") & (runs["tags.method"] != STUDY_METHOD)]
    client = mlflow.MlflowClient()
    evil_command = "python sweep.py a=`id` b=``` " + EVIL
    for run_id in done["run_id"]:
        client.log_text(run_id, evil_command, "command.txt")
    named, formula = done["run_id"].iloc[0], done["run_id"].iloc[1]
    client.set_tag(named, "mlflow.runName", EVIL)
    client.set_tag(formula, "mlflow.runName", '=HYPERLINK("https://evil.example","x")')
    import sqlite3

    with sqlite3.connect(tracking[0].split("///", 1)[1]) as db:  # values no run records (before: a JSONDecodeError)
        db.execute("UPDATE params SET value = '[' WHERE key = 'lora.target_modules'")
        db.execute("UPDATE params SET value = '{' WHERE key IN ('objectives', 'directions')")
    rc, out = make_report(store)
    assert rc == 0
    rendered = MarkdownIt("commonmark").enable("table").render((out / "report.md").read_text())

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.codes, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))

        def handle_data(self, data):
            self.text.append(data)
            if self.tags and self.tags[-1][0] == "code":
                self.codes.append(data)

    parsed = Tags()
    parsed.feed(rendered)
    assert {tag for tag, _ in parsed.tags} <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "code",
                                               "img"}
    assert all(a["src"].endswith(".png") and "://" not in a["src"] for tag, a in parsed.tags if tag == "img")
    assert EVIL in "".join(parsed.text)  # shown as the text it is
    assert evil_command in parsed.codes  # the whole command in one code span
    cells = pd.read_csv(out / "runs.csv", dtype=str)
    assert "'=HYPERLINK(\"https://evil.example\",\"x\")" in set(cells["run"])
    assert not [v for v in cells.select_dtypes("object").stack() if str(v).startswith(("=", "@", "+"))]
