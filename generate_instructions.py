"""Entry point: `python generate_instructions.py [overrides]` runs Self-Instruct's loop with the
configured model and records the generated tasks to MLflow (conf/generate_instructions.yaml).
Train on them with `python sweep.py data=self_instruct_generated data.generated=<run id>`."""

import sys

import hydra
from omegaconf import DictConfig

import sweep  # noqa: F401  (registers the config resolvers)
from sweep.pipeline.overrides import exit_on_bad_overrides
from sweep.runtime.secrets import guard_output

CONFIG = "generate_instructions"


@hydra.main(version_base="1.3", config_path="conf", config_name=CONFIG)
def main(cfg: DictConfig):
    # heavy imports only when it runs
    from sweep.pipeline.generate import main as generate

    return generate(cfg)


if __name__ == "__main__":
    guard_output()  # credentials in URLs never reach the terminal, logs or tracebacks
    from sweep.pipeline.generate import validate_config

    exit_on_bad_overrides(sys.argv[1:], CONFIG, validate_config)
    main()
