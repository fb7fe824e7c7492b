"""GPU figures (`make bench-gpu`, under ten minutes): a LoRA and a QLoRA trial of SmolLM2-135M on
the GPU, with tokens/s, model FLOPs utilization and peak GPU memory, as the harness records them.
Writes bench/gpu_results.json and bench/gpu_results.md. Needs a CUDA GPU; no test depends on it.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import torch

ROOT = Path(__file__).resolve().parent.parent
TRIALS = {"lora": ["method=lora"], "qlora": ["method=qlora"]}
COMMON = ["model=smollm2_135m", "train.max_steps=200", "train.batch_size=32", "data.max_train_samples=8000",
          "eval.enabled=false", "tracking.log_adapter=false", "tracking.experiment=bench-gpu"]


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA GPU here: `make bench-gpu` measures GPU figures (use `make bench` on the CPU)",
              file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    results = {"card": card, "torch": torch.__version__, "trials": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        uri = f"sqlite:///{work}/mlflow.db"
        for name, args in TRIALS.items():
            subprocess.run([sys.executable, str(ROOT / "sweep.py"), *COMMON, *args, f"tracking.uri={uri}",
                            f"tracking.artifact_location={work}/artifacts"], cwd=ROOT, check=True)
            mlflow.set_tracking_uri(uri)
            run = mlflow.search_runs(experiment_names=["bench-gpu"], order_by=["start_time DESC"]).iloc[0]
            results["trials"][name] = {k: float(run.get(f"metrics.{k}", float("nan"))) for k in (
                "train_tokens_per_second", "mfu", "peak_gpu_mb", "model_memory_mb", "train_seconds")}
            results["trials"][name]["optim"] = run.get("tags.train_optim")
    out = ROOT / "bench"
    (out / "gpu_results.json").write_text(json.dumps(results, indent=1))
    rows = [f"| {n} | {t['train_tokens_per_second']:,.0f} | {t['mfu']:.3f} | {t['peak_gpu_mb']:,.0f} | "
            f"{t['model_memory_mb']:,.0f} | {t['optim']} |" for n, t in results["trials"].items()]
    (out / "gpu_results.md").write_text(
        f"# GPU figures ({card})\n\n| trial | tokens/s | MFU | peak GPU MB | model MB | optimizer |\n"
        "|---|---:|---:|---:|---:|---|\n" + "\n".join(rows) + "\n")
    print((out / "gpu_results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
