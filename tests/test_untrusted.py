"""What a shared store holds is untrusted input: crafted values are refused or made inert before
they cost memory, change a model, end a filter's string or reach a terminal."""

from __future__ import annotations

import json
import re
import shutil
import time
from types import SimpleNamespace

import mlflow
import pytest

from sweep.config import ConfigError
from sweep.pipeline.reproduce import stored_config
from sweep.stages.lineage import check_adapter_config
from sweep.tracking.untrusted import Unquotable, equals, printable

# 9 x 9 x 9 x 9 x 9 strings from 300 bytes: about 60,000 nodes once expanded (the probe's 600-byte
# version took 38 s and 1.2 GB before it was refused).
ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcd", "bcde"))


def test_a_yaml_alias_bomb_or_deep_nesting_in_a_stored_config_is_refused_at_once():
    for text, needle in ((ALIAS_BOMB, "anchors or aliases"), ("x: " + "[" * 100 + "]" * 100, "nests deeper than 32"),
                         ("x: " + "y" * 2_000_000, "more than a recorded config ever is")):
        started = time.monotonic()
        with pytest.raises(ConfigError, match=needle):
            stored_config(text)
        assert time.monotonic() - started < 1.0
    assert stored_config("lora: {r: 8, target_modules: [q_proj, v_proj]}") == {
        "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}}


@pytest.mark.parametrize("extra, needle", [({"layer_replication": [[0, 2], [1, 2]]}, "'layer_replication'"),
                                           ({"exec_hook": "os.system"}, "'exec_hook'"),
                                           ({"megatron_core": "os"}, "'megatron_core'"),
                                           ({"megatron_config": {"tensor_model_parallel_size": 2}}, "'megatron_config'"),
                                           ({"init_lora_weights": "loftq"}, "'init_lora_weights'"),
                                           ({"init_lora_weights": 1}, "'init_lora_weights'")])
def test_an_adapter_config_with_a_reshaping_or_unknown_field_is_refused(tmp_path, extra, needle):
    from peft import LoraConfig

    config = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]).to_dict()
    config["peft_type"], config["task_type"] = "LORA", "CAUSAL_LM"
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(config, default=str))
    check_adapter_config("init.run_id", "0" * 32, path, "CAUSAL_LM")  # what peft writes passes
    path.write_text(json.dumps(config | extra, default=str))
    with pytest.raises(ConfigError, match=f"sets {needle}, which no stage of this project writes"):
        check_adapter_config("init.run_id", "0" * 32, path, "CAUSAL_LM")


def test_a_quote_in_a_store_value_cannot_end_an_mlflow_filter(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    for value in ("it's", 'say "hi"', "plain"):
        with mlflow.start_run(tags={"model": value}):
            pass
    for value in ("it's", 'say "hi"', "plain"):
        found = mlflow.search_runs(search_all_experiments=True, filter_string=equals("tags.model", value))
        assert list(found["tags.model"]) == [value]
    with pytest.raises(Unquotable):
        equals("tags.model", "both ' and \"")


def test_terminal_escapes_in_store_text_are_shown_not_obeyed():
    assert printable("run\x1b]0;pwned\x07\x1b[2J\rname\x9b") == "run\ufffd]0;pwned\ufffd\ufffd[2J\ufffdname\ufffd"
    assert printable("lora-r8 ± 0.01 ✓") == "lora-r8 ± 0.01 ✓"


def test_store_text_reaches_the_reports_csv_shown_not_obeyed():
    """A run name, model or sweep id holding terminal escapes goes into runs.csv with them made visible."""
    import pandas as pd

    from analysis.report import tidy

    runs = pd.DataFrame([{"run_id": "0" * 32, "status": "FINISHED", "tags.method": "lora", "tags.model": "m\x1b[31m",
                          "tags.mlflow.runName": "evil\x1b]0;pwned\x07name", "tags.sweep_id": "s\r",
                          "metrics.sst2/acc": 0.5}])
    csv = tidy(runs).to_csv(index=False)
    assert not any(c in csv for c in "\x1b\x07\r") and "evil\ufffd]0;pwned\ufffdname" in csv


def test_a_pickle_stored_under_the_safetensors_name_is_refused_before_loading_and_by_check_store(tmp_path,
                                                                                                monkeypatch):
    """An adapter whose weights file is a pickle (whole in its manifest, the store's tags edited to
    match) is refused in one line before peft opens it, and check-store names it (before: safetensors
    raised mid-load, a traceback)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    from sweep.ops import integrity
    from sweep.stages.lineage import check_adapter

    folder = tmp_path / "adapter"
    folder.mkdir()
    config = LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj"]).to_dict()
    (folder / "adapter_config.json").write_text(json.dumps(config | {"peft_type": "LORA", "task_type": "CAUSAL_LM"},
                                                           default=str))
    save_file({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    check_adapter("init.run_id", "0" * 32, folder, "CAUSAL_LM")  # what the trainer writes passes
    torch.save({"w": torch.zeros(2)}, folder / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match="adapter_model.safetensors is not a safetensors file; refused"):
        check_adapter("init.run_id", "0" * 32, folder, "CAUSAL_LM")

    def fetched(store, run_id, expected, into):  # (the manifest matches: the store's tag was edited too)
        shutil.copytree(folder, into)
        return True

    monkeypatch.setattr(integrity, "verified_adapter", fetched)
    run = SimpleNamespace(info=SimpleNamespace(run_id="1" * 32),
                          data=SimpleNamespace(tags={integrity.ADAPTER_SHA_TAG: "0" * 64}, params={}))
    [found] = integrity.adapter_violations(None, run, tmp_path / "download")
    assert found.run_or_trial == f"run {'1' * 32}" and "is not a safetensors file" in found.problem
    assert not (tmp_path / "download").exists()


@pytest.mark.parametrize("edit, needle", [("eval: 3", "eval=3"), ("lora: [1, 2]", "lora=[1, 2]"),
                                          ("seed: {a: 1}", "seed={'a': 1}")])
def test_a_stored_config_of_the_wrong_shape_is_refused_in_one_line(monkeypatch, edit, needle):
    """A stored config with a scalar where a group of keys belongs (or a group where a value does)
    is refused before anything is built (before: OmegaConf took `eval: 3`, and the job failed on
    `cfg.eval.tasks` with a traceback)."""
    from omegaconf import OmegaConf

    from sweep.config import compose_config
    from sweep.pipeline import reproduce

    text = OmegaConf.to_yaml(compose_config([]), resolve=True)  # (as a run records it)
    key = edit.split(":")[0]
    lines = text.splitlines()
    start = lines.index(f"{key}:") if f"{key}:" in lines else next(i for i, line in enumerate(lines)
                                                                     if line.startswith(f"{key}:"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    crafted = "\n".join([*lines[:start], edit, *lines[end:]])
    monkeypatch.setattr(reproduce.mlflow.artifacts, "load_text", lambda uri: crafted)
    with pytest.raises(ConfigError, match=f"the run's config has {re.escape(needle)}, where today's config"):
        reproduce.recorded_config("0" * 32)
    monkeypatch.setattr(reproduce.mlflow.artifacts, "load_text", lambda uri: text)
    reproduce.recorded_config("0" * 32)  # what a run records is taken


def test_a_run_recorded_before_the_training_attention_setting_reproduces_with_the_models_attention(monkeypatch):
    """train.attn_implementation=auto (eager attention for training on the CPU) is newer than some
    recorded runs; those trained with the model's attention (sdpa), and reproduce as they ran."""
    from omegaconf import OmegaConf

    from sweep.config import compose_config
    from sweep.pipeline import reproduce

    text = OmegaConf.to_yaml(compose_config([]), resolve=True)
    older = "\n".join(line for line in text.splitlines() if not line.startswith("  attn_implementation: auto"))
    assert older != text
    for recorded, trains_with in ((text, "auto"), (older, "sdpa")):
        monkeypatch.setattr(reproduce.mlflow.artifacts, "load_text", lambda uri, recorded=recorded: recorded)
        assert reproduce.recorded_config("0" * 32)[0].train.attn_implementation == trains_with
