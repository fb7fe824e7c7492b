"""Config composition (every group option) and the checks that reject bad input before compute."""


import subprocess
import sys

import pytest

from sweep.config import ConfigError, group_options
from sweep.pipeline.checks import validate
from tests.conftest import ROOT, compose

GROUPS = ["model", "method", "lora", "prompt", "data", "train", "eval", "tracking"]


@pytest.mark.parametrize("group,option", [
    (g, option) for g in GROUPS for option in group_options(g)
])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose(f"{group}={option}")
    validate(cfg)
    assert cfg[group] is not None


@pytest.mark.parametrize("experiment", [p.stem for p in sorted((ROOT / "conf" / "experiment").glob("*.yaml"))])
def test_every_experiment_composes(experiment):
    validate(compose(f"experiment={experiment}"))


def test_defaults_are_the_documented_ones():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("FreshProcessLauncher")  # a multirun's jobs each in a new process
    cfg = compose()
    assert (cfg.model.name, cfg.method.name, cfg.data.task) == ("smollm2_135m", "lora", "sst2")
    assert cfg.eval.tasks == ["sst2"] and cfg.eval.num_fewshot == 4
    assert cfg.tracking.uri == f"sqlite:///{ROOT}/mlflow.db"
    assert cfg.train.lr == cfg.method.default_lr == 1e-3
    assert cfg.model.trust_remote_code is False


def test_eval_tasks_follow_data_and_lr_follows_method():
    assert compose("data=rte").eval.tasks == ["rte"]
    assert compose("method=full").train.lr == 5e-5
    assert compose("method=full", "train.lr=1e-4").train.lr == 1e-4
    assert compose("method=few_shot", "eval.num_fewshot=2").method.num_fewshot == 2
    assert compose("method=zero_shot").method.num_fewshot == 0


def test_derived_values_resolve():
    cfg = compose("lora.r=4", "lora.alpha='${mul:2,${lora.r}}'")
    assert cfg.lora.alpha == 8


@pytest.mark.parametrize("override,needle", [
    ("lora.r=0", "lora.r=0 is invalid: must be a positive integer"),
    ("lora.r=-2", "lora.r=-2"),
    ("lora.r=2.5", "lora.r=2.5"),
    ("lora.alpha=0", "lora.alpha=0 is invalid"),
    ("lora.dropout=1.0", "lora.dropout=1.0 is invalid: must be in [0, 1)"),
    ("lora.dropout=-0.1", "lora.dropout"),
    ("lora.target_modules=qvk", "use a preset (qv, qkvo, mlp, all-linear)"),
    ("lora.bias=some", "lora.bias"),
    ("train.max_steps=0", "train.max_steps=0"),
    ("train.lr=-1", "train.lr=-1"),
    ("train.sampling=shuffled", "train.sampling"),
    ("eval.num_fewshot=-1", "eval.num_fewshot=-1"),
    ("eval.limit=0", "eval.limit=0"),
    ("eval.tasks=[]", "eval.tasks"),
    ("eval.include_paths=[/no/such/folder]", "eval.include_paths='/no/such/folder'"),
    ("data.max_train_samples=0", "data.max_train_samples=0"),
    ("lora.init=pisa", "lora.init='pisa' is invalid: choose one of default, gaussian, pissa, olora (did you mean: pissa"),
    ("lora.use_dora=1", "lora.use_dora=1 is invalid: must be true or false"),
    ("lora.rank_pattern={k_proj:0}", "lora.rank_pattern"),
    ("method=qlora lora.init=pissa", "pissa and olora rewrite the base weights"),
    ("method=qlora method.quantization.bnb_4bit_compute_dtype=float64", "bnb_4bit_compute_dtype='float64'"),
    ("method=qlora method.quantization.load_in_4bit=false", "set exactly one of load_in_4bit and load_in_8bit"),
    ("method=qlora +method.quantization.bnb_4bit_quant_typ=fp4", "not a BitsAndBytesConfig setting (did you mean: bnb_4bit_quant_type"),
    ("method=prompt_tuning prompt.num_virtual_tokens=0", "prompt.num_virtual_tokens=0"),
    ("method=prompt_tuning prompt.init=vocab", "prompt.init='vocab' is invalid: choose text or random"),
    ("train.padding_free=yes", "train.padding_free='yes' is invalid: must be true or false"),
    ("method=prefix_tuning train.padding_free=true", "method=prefix_tuning prepends virtual tokens to each example"),
    ("stage=dpo train.padding_free=true", "stage=dpo batches with TRL's collator; padding-free batches are stage=sft's"),
    ("train.torch_compile=maybe", "train.torch_compile='maybe' is invalid: must be true or false"),
    ("train.pad_to_multiple_of=0", "train.pad_to_multiple_of=0 is invalid: must be a positive integer up to train.max_seq_length"),
    ("train.pad_to_multiple_of=64 train.padding_free=true", "train.padding_free=true has no padding: set one of them"),
    ("stage=dpo train.pad_to_multiple_of=64", "stage=dpo pads with TRL's collator; rounded-up batches are stage=sft's"),
    ("train.attn_implementation=flash", "train.attn_implementation='flash' is invalid: choose auto or one of sdpa, eager"),
    ("stage=dpo train.attn_implementation=eager", "a training step's own is stage=sft's: set train.attn_implementation=auto"),
    ("method=full train.optim=adam", "train.optim='adam' is invalid"),
    ("method=zero_shot eval.enabled=false", "eval.enabled=False is invalid: must be true or false, and true for a method that does not train"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        validate(compose(*override.split()))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_suggests_close_match():
    with pytest.raises(ConfigError, match=r"did you mean: qkvo"):
        validate(compose("lora.target_modules=qkov"))


def test_quantization_without_bitsandbytes_names_the_package_and_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"method.quantization needs bitsandbytes, which is not installed: run "
                                          r"`make install` \(or `pip install bitsandbytes`\)"):
        validate(compose("method=qlora"))
    validate(compose("method=lora"))  # nothing else needs it


def test_a_bad_lora_value_is_refused_whatever_the_method():
    """A bad value is a typo wherever it sits (issue 39: `method=zero_shot lora.r=0` was accepted)."""
    with pytest.raises(ConfigError, match="lora.r=0 is invalid"):
        validate(compose("method=zero_shot", "lora.r=0"))
    validate(compose("method=zero_shot"))


def test_unknown_group_option_is_rejected_by_hydra_with_choices():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as e:
        compose("method=lorra")
    assert "lora" in str(e.value)


@pytest.mark.parametrize("preset", [p.stem for p in sorted((ROOT / "conf" / "hparams_search").glob("*.yaml"))])
def test_hparams_search_presets_compose_with_the_optuna_sweeper(preset):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sweep.study.search import parse_search_space

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    validate(cfg)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    space = parse_search_space([f"{k}={v}" for k, v in sweeper.params.items()])
    assert space.distributions and not space.fixed


@pytest.mark.parametrize("args", [
    ["method=few_shot", "eval.num_fewshot=2"], ["-m", "method=zero_shot,few_shot"], ["model=tiny", "model.from_config.hidden_size=32"],
    ["experiment=quickstart", "eval.limit=3"], ["+tracking.tags.owner=ana"], ["hparams_search=lora_tpe", "hydra.sweeper.n_trials=2"],
    ["lora.alpha='${mul:2,${lora.r}}'"],
])
def test_valid_overrides_pass_the_command_line_check(args):
    from sweep.pipeline.overrides import check_overrides

    check_overrides([a for a in args if not a.startswith("-")], compose())


@pytest.mark.parametrize("args,needle", [
    (["lora.rr=3"], "lora.rr: no such config key (did you mean: lora.r"),
    (["-m", "method=zero_shot,fewshot"], "method=fewshot: no such option in conf/method/"),
    (["train.max_step=3"], "did you mean: train.max_steps"),
    (["+new_key=1"], "nothing reads a new key new_key"),
])
def test_unknown_keys_and_options_are_named_with_close_matches(args, needle):
    from sweep.pipeline.overrides import check_overrides

    with pytest.raises(ConfigError) as e:
        check_overrides([a for a in args if not a.startswith("-")], compose())
    assert needle in str(e.value)


def test_optimizer_and_scheduler_names_are_read_without_importing_transformers_training():
    """The command-line check names a bad train.optim in a second: it reads transformers' enums from
    their source, and they are the enums the library itself holds."""
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    from sweep.training.checks import enum_values

    assert enum_values("transformers.training_args", "OptimizerNames") == [o.value for o in OptimizerNames]
    assert enum_values("transformers.trainer_utils", "SchedulerType") == [s.value for s in SchedulerType]
    probe = subprocess.run([sys.executable, "-c", "import sys; from sweep.pipeline import overrides; "
                            "from sweep.training.checks import enum_values; "
                            "enum_values('transformers.training_args', 'OptimizerNames'); "
                            "print(sorted(m for m in ('torch', 'mlflow', 'trl', 'peft', 'transformers') if m in sys.modules))"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"  # checking a command line imports none of the heavy libraries
