"""sft-sweep: run, track and compare supervised fine-tuning experiments on causal LMs.

The pipeline, one module a step: config (checks) -> build (models, methods, data) -> train ->
evaluate -> tracking (record); job.py strings them together; analysis/ reports.
"""

import logging

from sweep.config import register_resolvers

register_resolvers()
# bitsandbytes tries to fetch an optional CPU kernel from the hub at import and warns when it
# cannot (always, offline); its built-in fallback is what runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
