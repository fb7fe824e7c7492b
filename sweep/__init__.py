"""sft-sweep: run, track and compare supervised fine-tuning experiments on causal LMs.

Data flows one way: config (pipeline/checks.py) -> build (training/, data/) -> train (stages/table.py:
the stage's trainer) -> evaluate (scoring/) -> record (tracking/); pipeline/job.py strings them together, and
analysis/ reports. docs/architecture.md maps the sub-packages and the direction of imports.
"""

import logging

from sweep.config import register_resolvers

register_resolvers()
# bitsandbytes tries to fetch an optional CPU kernel from the hub at import and warns when it
# cannot (always, offline); its built-in fallback is what runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
