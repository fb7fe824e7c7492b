"""The stage table is the one place a stage is described: every conf/stage option has an entry and
every entry an option; run names, data kinds, judging and checks come from it."""

import pytest
from omegaconf import OmegaConf

from sweep.config import PROJECT_ROOT, ConfigError
from sweep.pipeline.checks import validate
from sweep.pipeline.naming import run_name
from sweep.stages.table import JUDGE_STAGE, POLICY_STAGES, STAGES, Stage, dpo_losses, validate_stage
from tests.conftest import compose


def test_every_stage_option_has_one_entry_and_no_entry_lacks_an_option():
    options = {p.stem for p in (PROJECT_ROOT / "conf" / "stage").glob("*.yaml")}
    assert options == set(STAGES)
    assert JUDGE_STAGE == "reward" and "reward" not in POLICY_STAGES and "sft" in POLICY_STAGES


@pytest.mark.parametrize("stage, name", [
    ("sft", "lora-r8-a16-qkvo"), ("reward", "reward-lora-r8-a16-qkvo"), ("dpo", "dpo-b0.1-lora-r8-a16-qkvo"),
    ("grpo", "grpo-b0.04-lora-r8-a16-qkvo"), ("ppo", "ppo-kl0.05-lora-r8-a16-qkvo")])
def test_a_stage_run_is_named_by_its_table_label(stage, name):
    assert run_name(compose("method=lora", f"stage={stage}")) == name


def test_dpo_losses_are_read_from_the_installed_trl():
    import dataclasses

    import trl

    losses = dpo_losses()
    assert {"sigmoid", "ipo", "hinge"} <= set(losses)
    help_text = {f.name: f for f in dataclasses.fields(trl.DPOConfig)}["loss_type"].metadata["help"]
    assert all(f"'{loss}'" in help_text for loss in losses)
    validate(compose("method=lora", "stage=dpo", "stage.loss_type=ipo"))  # (a TRL loss is accepted)


def test_a_new_stage_is_one_entry(monkeypatch):
    """An entry with its own check: validate_stage runs it, no other code names the stage."""
    checked = []
    monkeypatch.setitem(STAGES, "dpo", Stage("dpo", STAGES["dpo"].trainer, "pairs", "dpo-b{beta:g}",
                                             check=lambda stage, train: checked.append(stage.beta)))
    cfg = compose("method=lora", "stage=dpo", "stage.beta=0.3")
    validate_stage(cfg.stage, cfg.method, cfg.lora, None, cfg.train)
    assert checked == [0.3]
    with pytest.raises(ConfigError, match="stage='nope' is invalid: choose one of sft, reward, dpo"):
        validate_stage(OmegaConf.merge(cfg.stage, {"name": "nope"}), cfg.method, cfg.lora, None, cfg.train)
