"""Entry point: `python sweep.py [overrides]`, or `python sweep.py -m ...` for a sweep.

See README.md for the config groups; `python sweep.py --cfg job` prints the composed config.
"""

import sys

import hydra
from omegaconf import DictConfig

import sweep  # noqa: F401  (registers the config resolvers)
from sweep.pipeline.overrides import exit_on_bad_overrides
from sweep.runtime.secrets import guard_output


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from sweep.pipeline.job import (
        run_job,  # heavy imports (torch, transformers) only when a job runs
    )

    return run_job(cfg)


if __name__ == "__main__":
    guard_output()  # credentials in URLs never reach the terminal, logs or tracebacks
    exit_on_bad_overrides(sys.argv[1:])  # one clear line for an unknown key or option
    main()
