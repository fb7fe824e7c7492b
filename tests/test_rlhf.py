"""The RLHF pipeline: PPO's arithmetic by hand, preference data, the reward model's scores, lineage
between stages (init.run_id, eval.judge_run_id) and its errors, and `experiment=rlhf` end to end."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from sweep.config import ConfigError
from sweep.pipeline.checks import validate
from sweep.stages import ppo
from sweep.stages.preference import PairScores, mean_with_ci
from tests.conftest import ROOT, TINY, compose, run_sweep, runs_of

STAGES = ("sft", "reward", "dpo", "grpo", "rloo", "ppo")


# ---------------------------------------------------------------- PPO, checked by hand
def test_gae_matches_values_worked_by_hand():
    # row 0: three reply tokens, gamma 1, lambda 0.5; row 1: two reply tokens (the third is padding)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.5, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv0, ret0 = ppo.gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=0.5)
    # t=2: 1 - 0.3 = 0.7; t=1: (0 + 0.3 - 0.4) + 0.5 * 0.7 = 0.25; t=0: (0.4 - 0.5) + 0.5 * 0.25 = 0.025
    assert adv0.tolist()[0] == pytest.approx([0.025, 0.25, 0.7])
    assert ret0.tolist()[0] == pytest.approx([0.525, 0.65, 1.0])
    adv1, ret1 = ppo.gae(rewards[1:], values[1:], mask[1:], gamma=0.9, lam=1.0)
    # the padding's value (9) never leaks in: t=1: 2 - 1 = 1; t=0: (0.9 * 1 - 0.5) + 0.9 * 1 = 1.3
    assert adv1.tolist()[0] == pytest.approx([1.3, 1.0, 0.0])
    assert ret1.tolist()[0] == pytest.approx([1.8, 2.0, 0.0])


def test_clipped_policy_loss_matches_values_worked_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1]])
    advantages = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipfrac = ppo.clipped_policy_loss(torch.log(ratio), torch.zeros(1, 3), advantages, torch.ones(1, 3), 0.2)
    # max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped); max(-0.5, -0.8) = -0.5; max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    masked, _ = ppo.clipped_policy_loss(torch.log(ratio), torch.zeros(1, 3), advantages,
                                        torch.tensor([[1.0, 1.0, 0.0]]), 0.2)
    assert masked.item() == pytest.approx((-1.2 - 0.5) / 2)


def test_clipped_value_loss_matches_values_worked_by_hand():
    loss = ppo.clipped_value_loss(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 1.0]]),
                                  torch.ones(1, 2), 0.5)
    # token 0: max((2-3)^2, (1.5-3)^2) = 2.25; token 1: 1; half their mean
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)


def test_reply_mask_stops_after_the_first_eos():
    assert ppo.reply_mask(torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8]]), eos_id=2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


# ---------------------------------------------------------------- reward-model scores
def test_pairwise_accuracy_counts_ties_half_and_brackets_the_truth():
    scores = PairScores(chosen=[1.0, 2.0, 0.5, 0.0], rejected=[0.0, 1.0, 0.5, 1.0])
    m = scores.metrics("hh", seed=0)
    assert m["hh/pairwise_accuracy"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert m["hh/margin"] == pytest.approx((1 + 1 + 0 - 1) / 4)
    assert m["hh/pairwise_accuracy_ci_low"] <= m["hh/pairwise_accuracy"] <= m["hh/pairwise_accuracy_ci_high"]
    mean, low, high = mean_with_ci([1.0] * 50 + [0.0] * 50)
    assert mean == 0.5 and 0.35 < low < 0.5 < high < 0.65  # a fair coin over 100 pairs: about +-0.1


# ---------------------------------------------------------------- configs and data
def stage_cfg(stage: str, *extra: str):
    return compose(*TINY[1:], f"stage={stage}", "data=hh_rlhf", *extra)


def test_every_stage_composes_and_validates():
    for stage in STAGES:
        validate(stage_cfg(stage))


@pytest.mark.parametrize("overrides, message", [
    (["stage=dpo", "method=full"], "stage=dpo trains a LoRA adapter"),
    (["stage=reward", "init.run_id=" + "a" * 32], "starts from the base model"),
    (["stage=dpo", "init.run_id=latest"], "init.run_id='latest' is invalid: must be an MLflow run id"),
    (["stage=grpo", "stage.num_generations=3"], "must divide train.batch_size x train.grad_accum (4)"),
    (["stage=dpo", "stage.loss_type=sigmod"], "stage.loss_type='sigmod' is invalid: choose one of TRL's DPO losses"),
    (["stage=ppo", "stage.lam=1.5"], "stage.lam=1.5 is invalid: must be a number in [0, 1]"),
    (["stage=reward", "eval.pairs=0"], "eval.pairs=0 is invalid: must be a positive integer or null"),
])
def test_bad_stage_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(*TINY[1:], "data=hh_rlhf", *overrides))


def test_padded_passes_batch_similar_lengths_under_a_token_budget():
    """One long row pads only the rows beside it: longest first, at most batch_size rows and
    batch_size * TOKENS_PER_ROW padded tokens a batch, every row once."""
    from sweep.scoring.batching import TOKENS_PER_ROW, length_batches

    lengths = [30, 1320, 25, 400, 380, 20, 35, 390]
    batches = length_batches(lengths, batch_size=4)
    assert [[lengths[i] for i in b] for b in batches] == [[1320], [400, 390], [380, 35], [30, 25, 20]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) * lengths[b[0]] <= 4 * TOKENS_PER_ROW or len(b) == 1 for b in batches)
    assert length_batches([], 4) == [] and length_batches([5, 5, 5], 2) == [[0, 1], [2]]


def test_the_reward_models_scores_batched_equal_one_text_at_a_time():
    """RewardJudge sorts and batches by length (and truncates a long text from the left): each
    text's reward is what it scores alone."""
    from sweep.stages.preference import RewardJudge
    from sweep.training.models import load_model_and_tokenizer

    cfg = compose("model=tiny")
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.paths.cache, seed=0, reward_head=True)
    prompts = ["Hi.", "Tell me a long story about " + "a very long road, " * 40, "Name a colour:", "Why?"]
    replies = [" Hello there, friend.", " Once upon a time.", " Blue", " Because."]
    alone = [RewardJudge(model, tokenizer, 64, 1).scores([p], [r])[0] for p, r in zip(prompts, replies)]
    assert len(set(alone)) == 4
    for batch_size in (2, 4):
        assert RewardJudge(model, tokenizer, 64, batch_size).scores(prompts, replies) == pytest.approx(alone, rel=1e-4)
    # A text longer than max_length keeps its end: the reply is judged, the prompt's start dropped.
    judge = RewardJudge(model, tokenizer, 64, 4)
    assert judge.scores(prompts[1:2], [" Yes."]) != judge.scores(prompts[1:2], [" No, a different reply entirely."])
    assert judge.scores(prompts[1:2], [" Yes."]) == pytest.approx(judge.scores([prompts[1][200:]], [" Yes."]), rel=1e-4)
    assert tokenizer.truncation_side == "right"  # (the tokenizer's own setting is left as it was)


@pytest.mark.parametrize("peft", [None, "lora", "prompt_tuning", "prefix_tuning"])
def test_the_kls_log_probabilities_batched_equal_one_sequence_at_a_time(tiny, peft):
    """sequence_logprobs sorts, left-pads and projects the last positions only: on sequences of very
    different lengths it gives what each sequence scored alone gives, for a plain model and adapters."""
    import copy

    from sweep.scoring.evaluate import make_lm
    from sweep.stages.judging import sequence_logprobs
    from sweep.training.methods import apply_method

    model, tokenizer = tiny
    if peft:
        torch.manual_seed(0)
        cfg = compose("model=tiny", f"method={peft}", "lora.init=gaussian")
        model = apply_method(copy.deepcopy(model), cfg.method, cfg.lora, cfg.prompt, tokenizer.name_or_path,
                             "CAUSAL_LM")
    lm = make_lm(model, tokenizer, batch_size=2)
    contexts = ["Hi.", "Tell me a long story about " + "a very long road, " * 40, "Name a colour:", "Why?"]
    replies = [" Hello there, friend.", " Once upon a time.", " Blue", ""]
    alone = []
    for c, r in zip(contexts, replies):
        ctx, rep = lm.tok_encode(c), lm.tok_encode(r, add_special_tokens=False)
        with torch.inference_mode():  # (counted from the end: prompt tuning puts its virtual tokens first)
            logits = model(input_ids=torch.tensor([ctx + rep])).logits[0, -len(rep) - 1:-1]
        alone.append(float(torch.log_softmax(logits.float(), -1)[torch.arange(len(rep)), torch.tensor(rep, dtype=torch.long)].sum()))
    assert alone[3] == 0.0 and all(a < 0 for a in alone[:3])
    for batch_size in (1, 2, 3):
        assert sequence_logprobs(model, lm, contexts, replies, batch_size) == pytest.approx(alone, rel=1e-4)


def test_trls_fused_head_projects_only_labelled_positions_on_the_cpu_for_the_same_log_probs(monkeypatch):
    """TRL's fused LM head (DPO, GRPO, RLOO) projects every position of a row on the CPU, prompt and
    padding included; widened (sweep/stages/fused_head.py) it projects only the labelled ones, and each
    labelled position's log-probability is still the plain logits' log-softmax."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer import utils

    from sweep.stages.fused_head import score_labelled_positions_only

    monkeypatch.setattr(utils, "_use_triton", utils._use_triton)  # (restored after the test)
    projected, kernel = [], utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(utils._ChunkedLogProbFunction, "apply",
                        lambda hidden, *rest: projected.append(len(hidden)) or kernel(hidden, *rest))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 97, (3, 12))
    labels = ids.clone()
    labels[:, :9] = -100  # a prompt of nine tokens, a reply of three
    plain = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    utils.add_fused_lm_head(model)
    mask = labels[:, 1:] != -100

    before = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
    score_labelled_positions_only()
    score_labelled_positions_only()  # (idempotent)
    after = model(input_ids=ids, labels=labels, fused_lm_head=True)
    after.loss.backward()
    assert projected == [3 * 11, int(mask.sum())] == [33, 9]
    assert torch.allclose(after.log_probs[mask], plain[mask], atol=1e-5)
    assert torch.allclose(after.log_probs, before, atol=1e-5) and not after.log_probs[~mask].any()


def test_preference_pairs_render_as_the_policy_sees_them(tiny):
    from sweep.pipeline.build import load_project_tasks
    from sweep.stages.preference import pair_rows, preference_docs

    cfg = stage_cfg("dpo")
    task = load_project_tasks(cfg)[1]["hh_rlhf"]
    docs = preference_docs(task, "train", 8, 0, tiny[1], 64, "dpo")
    assert len(docs) == 8 and all(len(tiny[1](d["prompt"].strip()).input_ids) <= 64 for d in docs)
    row = pair_rows(task, docs[:1])[0]
    assert row["prompt"] == docs[0]["prompt"].strip() and row["prompt"].endswith("Assistant:")
    assert row["chosen"] == " " + docs[0]["chosen"].strip() and row["rejected"] == " " + docs[0]["rejected"].strip()


def test_a_stage_on_data_without_pairs_is_refused(tmp_path, tracking):
    from sweep.pipeline.job import execute

    with pytest.raises(ConfigError, match="stage=reward trains on preference pairs .* no text field 'prompt': use data=hh_rlhf"):
        execute(compose(*TINY[1:], "stage=reward", "data=sst2", *tracking))
    assert list(tmp_path.iterdir()) == []  # refused before a store existed


def test_preference_data_missing_a_field_fails_with_file_and_line(tmp_path, tracking):
    from sweep.pipeline.job import execute

    folder = tmp_path / "data" / "hh_rlhf_helpful"
    folder.mkdir(parents=True)
    source = ROOT / "data" / "hh_rlhf_helpful"
    (folder / "validation.jsonl").write_text((source / "validation.jsonl").read_text())
    rows = [json.loads(line) for line in (source / "train_short.jsonl").read_text().splitlines()[:3]]
    del rows[2]["rejected"]
    (folder / "train_short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"train_short.jsonl:3: missing field 'rejected'"):
        execute(compose(*TINY[1:], "stage=reward", "data=hh_rlhf", f"paths.data={tmp_path / 'data'}", *tracking))
    assert not (tmp_path / "mlflow.db").exists()  # refused before a store existed


# ---------------------------------------------------------------- the pipeline, end to end
RLHF_TINY = ["-m", "experiment=rlhf", *TINY, "data.max_train_samples=16", "eval.limit=4", "eval.pairs=4", "eval.batch_size=4",
             "train.batch_size=4", "data.max_prompt_tokens=128", "train.max_steps=4", "eval.generation.max_gen_toks=16",
             "data.dev_size=4"]  # (experiment=rlhf chooses nothing, so it carves no slice; here every stage scores one)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """`python sweep.py -m experiment=rlhf` on the tiny model: {stage: run row}, the store overrides."""
    tmp = tmp_path_factory.mktemp("rlhf")
    tracking = [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_location={tmp}/artifacts"]
    proc = run_sweep(*RLHF_TINY, *tracking, f"hydra.sweep.dir={tmp}/multirun")
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = runs_of(tracking, "rlhf")
    return {r["tags.stage"]: r for r in runs.to_dict("records")}, tracking, tmp


@pytest.mark.e2e
def test_experiment_rlhf_runs_every_stage_each_feeding_the_next(pipeline):
    """`experiment=rlhf` runs every stage, each later one from this sweep's SFT run and judged by its reward
    model, every policy scored on test and development prompts. Slow in its setup: the `pipeline` fixture runs
    the six stages (six jobs, TRL's trainers among them), shared by the file's tests."""
    runs, _, _ = pipeline
    assert set(runs) == set(STAGES) and all(r["status"] == "FINISHED" for r in runs.values())
    sft, reward = runs["sft"]["run_id"], runs["reward"]["run_id"]
    for stage in ("dpo", "grpo", "rloo", "ppo"):
        r = runs[stage]
        assert r["tags.parent_run_id"] == sft and r["tags.parent_stage"] == "sft"
        assert r["tags.judge_run_id"] == reward
        assert r["tags.mlflow.runName"].startswith(stage + "-")
        for metric in ("reward", "reward_reference", "win_rate", "kl_to_reference", "reply_tokens"):
            assert math.isfinite(r[f"metrics.hh_rlhf/{metric}"]), (stage, metric)
            assert math.isfinite(r[f"metrics.dev/hh_rlhf/{metric}"]), (stage, metric)  # judged on development prompts too
        assert r["metrics.hh_rlhf/win_rate_ci_low"] <= r["metrics.hh_rlhf/win_rate"] <= r["metrics.hh_rlhf/win_rate_ci_high"]
        assert r["metrics.train_seconds"] > 0
    assert "tags.parent_run_id" not in runs["sft"] or not isinstance(runs["sft"]["tags.parent_run_id"], str)
    r = runs["reward"]
    assert 0 <= r["metrics.hh_rlhf/pairwise_accuracy"] <= 1 and r["metrics.hh_rlhf/pairs"] == 4
    assert 0 <= r["metrics.dev/hh_rlhf/pairwise_accuracy"] <= 1 and r["metrics.dev/hh_rlhf/pairs"] == 4
    assert runs["ppo"]["metrics.rollout_tokens_per_second"] > 0
    assert runs["ppo"]["params.stage.kl_coef"] == "0.05" and runs["dpo"]["params.stage.beta"] == "0.1"
    assert runs["dpo"]["params.eval.generation.temperature"] == "1.0"  # generation settings are recorded


@pytest.mark.e2e
def test_a_later_stage_is_registered_as_its_adapter_on_its_parents_merged_into_the_base(pipeline, tmp_path):
    """make promote on a DPO run: the version holds the DPO adapter and refers to a base folder that is
    the SFT adapter merged into the base model; loaded with MLflow's API it gives the logits of the whole
    lineage (SFT, then DPO) merged into the base."""
    import mlflow

    from sweep.ops import promote
    from sweep.stages.lineage import fetch, merged
    from sweep.stages.table import POLICY_HEAD
    from sweep.training.models import load_model_and_tokenizer, weights_digest

    runs, tracking, _ = pipeline
    uri, dpo = tracking[0].split("=", 1)[1], runs["dpo"]
    version = promote.promote(dpo["run_id"], uri=uri)
    base = Path(version.tags["base_model_path"])
    assert base.parent.name == "promoted" and version.tags["base_model_sha256"] == weights_digest(str(base))
    loaded = mlflow.transformers.load_model(f"models:/{version.name}/{version.version}", return_type="components")
    cfg = compose("model=tiny", f"seed={dpo['params.seed']}")
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.paths.cache, cfg.seed)
    lineage = tuple(fetch("RUN", runs[s]["run_id"], POLICY_HEAD, uri, dpo["tags.base_model"], tmp_path)
                    for s in ("sft", "dpo"))
    ids = tokenizer("Human: how do I bake bread?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(loaded["model"](ids).logits, merged(model, lineage)(ids).logits, atol=1e-4)


@pytest.mark.e2e
def test_stage_tables_and_plots_are_logged(pipeline):
    import mlflow

    runs, tracking, _ = pipeline
    client = mlflow.MlflowClient(tracking[0].split("=", 1)[1])
    reward = runs["reward"]["run_id"]
    assert {"reward_scores.json", "reward_distribution.png", "adapter"} <= {f.path for f in client.list_artifacts(reward)}
    table = json.loads(Path(client.download_artifacts(runs["dpo"]["run_id"], "judged_replies.json")).read_text())
    columns = table["columns"]
    assert {"prompt", "reply", "reward", "reference_reply", "reference_reward", "log_ratio"} <= set(columns)
    assert len(table["data"]) == 4
    dev = json.loads(Path(client.download_artifacts(runs["dpo"]["run_id"], "dev_judged_replies.json")).read_text())
    assert len(dev["data"]) == 4 and {r[dev["columns"].index("prompt")] for r in dev["data"]}.isdisjoint(
        {r[columns.index("prompt")] for r in table["data"]})  # development prompts are not test prompts


def reference_column(client, run_id: str) -> list[str]:
    table = json.loads(Path(client.download_artifacts(run_id, "judged_replies.json")).read_text())
    return [row[table["columns"].index("reference_reply")] for row in table["data"]]


@pytest.mark.e2e
def test_the_rl_stages_generate_the_sft_reference_once_and_reuse_it_exactly(pipeline):
    """dpo generates the SFT policy's replies; grpo, rloo and ppo reuse them. Generated afresh
    (the cached file tampered with, so not reused), the replies are the same, word for word."""
    import mlflow

    from sweep.pipeline.job import execute

    runs, tracking, tmp = pipeline
    client = mlflow.MlflowClient(tracking[0].split("=", 1)[1])
    dpo = runs["dpo"]
    assert "reference_replies.json" in {f.path for f in client.list_artifacts(dpo["run_id"])}
    stored = json.loads(Path(client.download_artifacts(dpo["run_id"], "reference_replies.json")).read_text())
    assert set(stored) == {"hh_rlhf", "dev/hh_rlhf"}  # the reference's replies to both passes' prompts
    replies = reference_column(client, dpo["run_id"])
    for stage in ("grpo", "rloo", "ppo"):
        assert runs[stage]["tags.reference_replies_from"] == dpo["run_id"], stage
        assert runs[stage]["tags.reference_key"] == dpo["tags.reference_key"]
        assert reference_column(client, runs[stage]["run_id"]) == replies
    [cached] = Path(tmp, "artifacts").glob(f"**/{dpo['run_id']}/artifacts/reference_replies.json")
    cached.write_text(cached.read_text().replace('"', "'", 2))  # (no longer its recorded sha256)
    composed = [a for a in RLHF_TINY if a != "-m" and not a.startswith("hydra/")]  # (the sweep's settings)
    outcome = execute(compose(*composed, "stage=rloo", f"init.run_id={runs['sft']['run_id']}", "train.max_steps=1",
                              f"eval.judge_run_id={runs['reward']['run_id']}", "tracking.experiment=fresh", *tracking))
    assert outcome.status == "FINISHED"
    assert "reference_replies_from" not in client.get_run(outcome.run_id).data.tags
    assert reference_column(client, outcome.run_id) == replies


@pytest.mark.e2e
def test_init_run_id_loads_exactly_the_parents_adapter(pipeline, tiny):
    from safetensors.torch import load_file

    from sweep.pipeline.build import build
    from sweep.pipeline.build import resolve_lineage as resolve
    from sweep.pipeline.plan import plan_of

    runs, tracking, _ = pipeline
    sft, dpo = runs["sft"]["run_id"], runs["dpo"]["run_id"]
    cfg = stage_cfg("ppo", f"init.run_id={dpo}", f"eval.judge_run_id={runs['reward']['run_id']}", *tracking)
    ancestry = resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")
    assert [a.run_id for a in ancestry.policy] == [sft, dpo]  # the lineage, first stage first
    cfg = stage_cfg("dpo", f"init.run_id={sft}", *tracking)
    ancestry = resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")
    assert [a.run_id for a in ancestry.policy] == [sft] and ancestry.judge is None
    built = build(cfg, lineage=ancestry)
    # with its new adapter disabled the model is the base plus exactly the parent's LoRA update
    adapter = ancestry.parent.adapter
    settings = json.loads((adapter / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    stored = load_file(adapter / "adapter_model.safetensors")
    base = dict(tiny[0].named_parameters())
    weights = {n.replace("base_model.model.", "", 1).replace(".base_layer", ""): p
               for n, p in built.model.named_parameters() if ".base_layer." in n}
    checked = 0
    for key, a in stored.items():
        if ".lora_A." not in key:
            continue
        module = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", "")
        b = stored[key.replace(".lora_A.", ".lora_B.")]
        expected = base[f"{module}.weight"] + scale * (b @ a)
        assert torch.allclose(weights[f"{module}.weight"], expected, atol=1e-6), module
        checked += 1
    assert checked == len(stored) // 2 > 0
    assert any(p.abs().sum() > 0 for k, p in stored.items() if ".lora_B." in k)  # (the parent did learn)
    trainable = {n: p for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.abs().sum() == 0 for n, p in trainable.items() if "lora_B" in n)  # a fresh adapter: starts as the parent


@pytest.mark.e2e
@pytest.mark.parametrize("key, parent, message", [
    ("init.run_id", "reward", "is a stage=reward run; init.run_id needs a policy"),
    ("eval.judge_run_id", "sft", "is a stage=sft run; eval.judge_run_id needs a stage=reward run"),
])
def test_a_run_of_the_wrong_stage_is_refused(pipeline, key, parent, message):
    from sweep.pipeline.build import resolve_lineage as resolve
    from sweep.pipeline.plan import plan_of

    runs, tracking, _ = pipeline
    cfg = stage_cfg("grpo", f"init.run_id={runs['sft']['run_id']}", f"eval.judge_run_id={runs['reward']['run_id']}",
                    f"{key}={runs[parent]['run_id']}", *tracking)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")


@pytest.mark.e2e
def test_a_run_without_adapter_or_with_a_changed_one_is_refused(pipeline):
    import mlflow

    from sweep.pipeline.build import resolve_lineage as resolve
    from sweep.pipeline.plan import plan_of

    runs, tracking, tmp = pipeline
    client = mlflow.MlflowClient(tracking[0].split("=", 1)[1])
    sft = runs["sft"]["run_id"]
    bare = client.create_run(runs["sft"]["experiment_id"], tags={"stage": "sft", "base_model": "tiny (from_config, seed 0)"})
    client.set_terminated(bare.info.run_id)
    cfg = stage_cfg("dpo", f"init.run_id={bare.info.run_id}", *tracking)
    with pytest.raises(ConfigError, match="the run has no adapter"):
        resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")
    cfg = stage_cfg("dpo", f"init.run_id={sft}", *tracking, f"paths.cache={tmp}/cache")
    with pytest.raises(ConfigError, match="trained on another base model"):
        resolve(cfg, plan_of(cfg, "s", multirun=False), "HuggingFaceTB/SmolLM2-360M")
    import json
    import shutil

    folder = next((tmp / "artifacts").rglob(f"{sft}/artifacts/adapter/adapter_model.safetensors")).parent
    resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")  # (as stored: it loads)
    shutil.rmtree(tmp / "cache" / "adapters" / sft)  # (a verified local copy is what was scored: used as it is)
    kept = tmp / "kept-adapter"
    shutil.copytree(folder, kept)
    # The store changed after the run: the config alone (what peft reads as the scale), or the weights.
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"lora_alpha": config["lora_alpha"] * 100}))
    with pytest.raises(ConfigError, match="the adapter folder does not match the manifest sha256 its run recorded"):
        resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")
    shutil.rmtree(folder)
    shutil.copytree(kept, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ConfigError, match="does not match the manifest sha256 its run recorded"):
        resolve(cfg, plan_of(cfg, "s", multirun=False), "tiny (from_config, seed 0)")


@pytest.mark.e2e
def test_a_stage_started_alone_names_its_parent_in_one_line(tmp_path, tracking):
    proc = run_sweep(*TINY[1:], "stage=dpo", "data=hh_rlhf", *tracking, cwd=ROOT)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: init.run_id is not set: stage=dpo starts from a stage=sft run; give init.run_id=<its run id>"]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.e2e
def test_instruction_sft_is_judged_against_the_base_model(pipeline):
    """Issue 12's win rate: eval.judge_run_id on any generation task; the reference is the base model."""
    from sweep.pipeline.job import execute

    runs, tracking, _ = pipeline
    outcome = execute(compose(*TINY[1:], "data=self_instruct", "eval.limit=4", "eval.batch_size=4",
                              f"eval.judge_run_id={runs['reward']['run_id']}", "tracking.experiment=judged", *tracking))
    assert outcome.status == "FINISHED"
    m = outcome.metrics
    assert m["self_instruct/win_rate_ci_low"] <= m["self_instruct/win_rate"] <= m["self_instruct/win_rate_ci_high"]
    assert {"self_instruct/rougeL", "self_instruct/reward", "self_instruct/reward_reference",
            "self_instruct/kl_to_reference", "self_instruct/reply_tokens"} <= set(m)
    run = runs_of(tracking, "judged").iloc[0]
    assert run["tags.judge_run_id"] == runs["reward"]["run_id"] and "tags.parent_run_id" not in run
    assert run["tags.reference_key"] != runs["dpo"]["tags.reference_key"]  # the base model's replies, not SFT's


@pytest.mark.e2e
def test_a_judged_instruction_data_sweep_reports_rouge_and_win_rate_side_by_side(pipeline):
    """experiment=instruction_data judged by the pipeline's reward model (tiny, cut down): the report's
    instruction-data table holds, per source, ROUGE-L with its paired difference from the base model
    and the win rate against the base model's replies; one figure per score against size."""
    from analysis.report import main

    runs, tracking, tmp = pipeline
    path = tmp / "generated_tasks.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Write the word number {i}.", "input": "",
                                        "output": f"word {i}"}) + "\n" for i in range(8)))
    p = run_sweep("-m", "experiment=instruction_data", *TINY, *tracking, "method=zero_shot,lora", "data.mix=0,1",
                  "data.max_train_samples=4", f"data.generated={path}", "eval.tasks=[self_instruct]", "eval.limit=4",
                  "eval.batch_size=4", f"eval.judge_run_id={runs['reward']['run_id']}", "tracking.experiment=instr",
                  "data.dev_size=0")  # (as the experiment: it chooses nothing)
    assert p.returncode == 0, p.stderr[-3000:]
    assert main(["--experiment", "instr", "--tracking-uri", tracking[0].split("=", 1)[1], "--out", str(tmp / "instr")]) == 0
    text = (tmp / "instr" / "report.md").read_text()
    table = text.split("## Instruction data: source and size")[1].split("##")[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")]
    header, body = rows[0], {r[0]: dict(zip(rows[0], r)) for r in rows[1:]}
    assert header[3:] == ["self_instruct/rougeL", "self_instruct/rougeL vs base", "self_instruct/win_rate vs base",
                          "self_instruct/reply_tokens"]
    assert set(body) == {"base model, zero-shot", "hand-written", "generated"}
    finished = runs_of(tracking, "instr")
    for source, mix in (("hand-written", "0"), ("generated", "1")):
        run = finished[(finished["params.data.mix"] == mix) & (finished["tags.method"] == "lora")].iloc[0]
        win = [run[f"metrics.self_instruct/win_rate{s}"] for s in ("", "_ci_low", "_ci_high")]
        assert body[source]["self_instruct/win_rate vs base"] == "{:.2f} [{:.2f}, {:.2f}]".format(*win)
        assert body[source]["self_instruct/rougeL vs base"].startswith(("+", "-"))
    assert "self_instruct_win_rate_vs_training_instructions.png" in text
    assert "self_instruct_rougel_vs_training_instructions.png" in text


@pytest.mark.e2e
def test_a_judged_baseline_is_scored_once_per_judge(pipeline):
    """The zero-shot arm of a judged sweep is scored once (the judge's adapter is in the baseline
    cache's key), its judged replies reused with its scores; without the judge it is another baseline."""
    import mlflow

    from sweep.pipeline.job import execute

    runs, tracking, _ = pipeline
    args = [*TINY[1:], "method=zero_shot", "data=self_instruct", "eval.limit=4", "eval.batch_size=4",
            "tracking.experiment=judged_baseline", *tracking]
    judged = [*args, f"eval.judge_run_id={runs['reward']['run_id']}"]
    first, again, unjudged = execute(compose(*judged)), execute(compose(*judged)), execute(compose(*args))
    assert first.metrics["self_instruct/reward"] == again.metrics["self_instruct/reward"]
    assert "self_instruct/reward" not in unjudged.metrics
    tags = {r: mlflow.MlflowClient().get_run(r).data.tags for r in (first.run_id, again.run_id, unjudged.run_id)}
    assert tags[again.run_id]["cached_from"] == first.run_id
    assert tags[first.run_id]["cached"] == tags[unjudged.run_id]["cached"] == "false"
    assert "judged_replies.json" in {f.path for f in mlflow.MlflowClient().list_artifacts(again.run_id)}


@pytest.mark.e2e
def test_report_shows_the_pipeline(pipeline):
    from analysis.report import main

    runs, tracking, tmp = pipeline
    assert main(["--experiment", "rlhf", "--tracking-uri", tracking[0].split("=", 1)[1], "--out", str(tmp / "report")]) == 0
    text = (tmp / "report" / "report.md").read_text()
    for heading in ("RLHF pipeline: stages and lineage", "RLHF pipeline: hh_rlhf scores", "RLHF pipeline: sample replies"):
        assert f"## {heading}" in text
    lineage = text.split("## RLHF pipeline: stages and lineage")[1].split("##")[0]
    sft = runs["sft"]["run_id"][:8]
    rows = {line.split("|")[1].strip(): line for line in lineage.splitlines() if line.startswith("| ") and "stage" not in line}
    assert set(rows) == set(STAGES)
    assert all(f"({sft})" in rows[s] for s in ("dpo", "grpo", "rloo", "ppo")) and "base model" in rows["sft"]
    assert "reward_by_stage.png" in text and "reply_length_by_stage.png" in text
    assert any("reward_model" in p.name for p in (tmp / "report").glob("*.png"))


@pytest.mark.e2e
def test_optuna_sweeps_dpo_for_the_win_rate(pipeline, tmp_path):
    """hparams_search=dpo_tpe: an Optuna sweep of DPO from the pipeline's SFT run, judged by its reward model,
    for the win rate: slow because each trial trains DPO (TRL) and generates replies to judge."""
    import optuna

    from sweep.study.storage import make_storage

    runs, tracking, _ = pipeline
    proc = run_sweep("-m", "hparams_search=dpo_tpe", *TINY, "hydra.sweeper.n_trials=2", "eval.limit=4",
                     "eval.batch_size=4", "data.max_train_samples=8", "data.max_prompt_tokens=128",
                     f"init.run_id={runs['sft']['run_id']}", f"eval.judge_run_id={runs['reward']['run_id']}",
                     f"hydra.sweeper.storage={tmp_path}/optuna.journal", "hydra.sweeper.study_name=dpo",
                     f"hydra.sweep.dir={tmp_path}/multirun", *tracking)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="dpo", storage=make_storage(f"{tmp_path}/optuna.journal"))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and {"stage.beta", "train.lr", "lora.r"} <= set(done[0].params)
    trial_runs = runs_of(tracking, "rlhf")
    trial_runs = trial_runs[trial_runs["tags.optuna.trial_number"].notna() & (trial_runs["tags.method"] == "lora")]
    by_trial = {int(r["tags.optuna.trial_number"]): r for r in trial_runs.to_dict("records")}
    for t in done:  # each trial's value is its run's development win rate; each continues the SFT run with its rank
        run = by_trial[t.number]
        assert t.value == pytest.approx(run["metrics.dev/hh_rlhf/win_rate"])  # chosen on development prompts
        assert run["tags.parent_run_id"] == runs["sft"]["run_id"] and run["params.lora.r"] == str(t.params["lora.r"])


@pytest.mark.e2e
def test_a_dpo_run_reproduces_from_its_lineage(pipeline):
    """reproduce.py on the pipeline's DPO run trains it again from the same parent and judge and gets the same
    win rate: slow because reproducing is a whole DPO job."""
    import mlflow

    from sweep.pipeline.reproduce import reproduce

    runs, tracking, _ = pipeline
    mlflow.set_tracking_uri(tracking[0].split("=", 1)[1])
    lines = []
    assert reproduce(runs["dpo"]["run_id"], strict=False, rtol=None, log=lines.append) == 0, "\n".join(lines)
    again = runs_of(tracking, "rlhf")
    again = again[again["tags.reproduces"] == runs["dpo"]["run_id"]].iloc[0]
    assert again["tags.parent_run_id"] == runs["sft"]["run_id"] and again["tags.judge_run_id"] == runs["reward"]["run_id"]
    assert again["metrics.hh_rlhf/win_rate"] == runs["dpo"]["metrics.hh_rlhf/win_rate"]
