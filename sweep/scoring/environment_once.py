"""lm-eval's description of the environment, gathered once per process instead of at every scoring.

Why our own: `lm_eval.simple_evaluate` adds the environment to every result it returns
(`add_env_info`: torch's `collect_env`, which starts subprocesses, and two git look-ups), about
0.5 s a call on this project's 2 cores and two thirds of a tiny job's scoring. A job scores at least
twice (development and test), a strongest-baseline race dozens of times (each variant's growing
prefixes), and the environment does not change within a process: `gather_environment_once()`
makes lm-eval copy the first description into every later result, which stay identical.
"""

from __future__ import annotations

import copy
from functools import cache


@cache
def environment() -> dict:
    """What lm-eval's add_env_info writes into a result, gathered by it once."""
    from lm_eval.loggers.utils import add_env_info

    found: dict = {}
    add_env_info(found)
    return found


def add_env_info_once(storage: dict) -> None:
    storage.update(copy.deepcopy(environment()))


def gather_environment_once() -> None:
    """Route lm-eval's evaluator through `add_env_info_once`. Idempotent."""
    import lm_eval.evaluator

    lm_eval.evaluator.add_env_info = add_env_info_once
