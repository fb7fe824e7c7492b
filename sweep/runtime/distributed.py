"""Which process of a multi-process job this is (`accelerate launch`, `torchrun`, DeepSpeed).

Every process trains its share of each batch (transformers' Trainer wraps the model in DDP,
FSDP or DeepSpeed from the launcher's environment); only the main one records, scores and saves,
so a job is one MLflow run whatever its number of processes.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """The process's index on its host: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0
