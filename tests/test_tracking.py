"""Recording against a team's server: URIs from the environment, links, datasets, retries."""

import mlflow
import pytest
from omegaconf import OmegaConf

from sweep.config import default_tracking_uri
from sweep.tracking import store
from tests.conftest import compose


def test_the_tracking_uri_follows_MLFLOW_TRACKING_URI(monkeypatch, tmp_path):
    assert compose().tracking.uri == default_tracking_uri() == f"sqlite:///{compose().paths.root}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert compose().tracking.uri == default_tracking_uri() == "http://mlflow.team:5000"
    assert compose("tracking.uri=sqlite:///x.db").tracking.uri == "sqlite:///x.db"  # an explicit key still wins


def test_a_server_keeps_its_own_artifacts_a_local_store_gets_a_file_uri(tmp_path):
    server = OmegaConf.create({"uri": "https://mlflow.team", "artifact_location": str(tmp_path / "a")})
    local = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/m.db", "artifact_location": str(tmp_path / "a")})
    assert store.artifact_location(server) is None
    assert store.artifact_location(local) == (tmp_path / "a").as_uri()


def test_runs_page_opens_the_model_training_view_and_hides_credentials():
    assert store.runs_page("https://bob:s3cret@mlflow.team/", "7") == \
        "https://bob:***@mlflow.team/#/experiments/7/runs?workflowType=machine_learning"
    assert store.runs_page("sqlite:///x.db", "1").startswith(f"{store.LOCAL_UI}/#/experiments/1/runs?")


def test_experiments_are_tagged_as_model_training(tmp_path):
    cfg = OmegaConf.create({"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "e", "artifact_location": None})
    exp_id = store.open_experiment(cfg)
    client = mlflow.MlflowClient(cfg.uri)
    client.delete_experiment_tag(exp_id, "mlflow.experimentKind")  # an experiment made before the tag existed
    assert store.open_experiment(cfg) == exp_id
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_system_metrics_of_a_run_shorter_than_one_sampling_interval_are_kept(tmp_path):
    """MLflow's own monitor publishes only after a full interval; a quick job would record nothing."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from sweep.tracking.system_metrics import RunSystemMetrics

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/m.db")
    kept = {}
    for monitor in (SystemMetricsMonitor, RunSystemMetrics):
        run_id = client.create_run(client.create_experiment(monitor.__name__)).info.run_id
        m = monitor(run_id, sampling_interval=60, tracking_uri=client.tracking_uri)
        m.start()
        m.finish()
        kept[monitor] = {k for k in client.get_run(run_id).data.metrics if k.startswith("system/")}
    assert kept[SystemMetricsMonitor] == set()
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= kept[RunSystemMetrics]


@pytest.mark.parametrize("key,value", [("system_metrics", "yes"), ("system_metrics_interval", 0),
                                       ("system_metrics_interval", "fast")])
def test_bad_system_metrics_settings_are_refused(key, value):
    from sweep.config import ConfigError
    from sweep.tracking.checks import validate_tracking

    with pytest.raises(ConfigError, match=f"tracking.{key}="):
        validate_tracking(compose(f"tracking.{key}={value}").tracking)


def test_mlflows_peft_flavour_keeps_the_adapter_only_when_told_the_local_base(tiny, tmp_path):
    """Why make promote passes `base_model_path` (sweep/ops/promote.py): a PEFT model on a local base
    saved without it loads back with different outputs (MLflow writes the wrapped weights); with it, the
    version holds the adapter alone and loads back with the same outputs."""
    import copy

    import peft
    import torch

    from sweep.training.models import model_source
    from tests.conftest import compose

    model, tokenizer = tiny
    cfg = compose("model=tiny")
    base = model_source(cfg.model, cfg.paths.cache, 0)
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False, task_type="CAUSAL_LM"))
    ids = tokenizer("a fine film", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = lora(ids).logits
    outputs = {}
    for name, base_model_path in (("unreferenced", None), ("referenced", base)):
        folder = tmp_path / name
        mlflow.transformers.save_model({"model": lora, "tokenizer": tokenizer}, str(folder), task="text-generation",
                                       pip_requirements=["torch"], base_model_path=base_model_path)
        loaded = mlflow.transformers.load_model(str(folder), return_type="components")["model"]
        with torch.no_grad():
            outputs[name] = loaded(ids).logits
    assert not torch.allclose(outputs["unreferenced"], expected, atol=1e-3)
    assert torch.allclose(outputs["referenced"], expected, atol=1e-5)
    saved = {str(f.relative_to(tmp_path / "referenced")) for f in (tmp_path / "referenced").rglob("*.safetensors")}
    assert saved == {"peft/adapter_model.safetensors"}  # the adapter, not the base's weights
