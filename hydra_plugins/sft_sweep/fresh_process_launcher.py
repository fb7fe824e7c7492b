"""Registration shim: Hydra loads launchers only from the `hydra_plugins` namespace package.
The implementation lives in sweep/study/fresh_process.py."""

from sweep.study.fresh_process import FreshProcessLauncher as _FreshProcessLauncher


class FreshProcessLauncher(_FreshProcessLauncher):
    """Each job of a multirun in a new process; see sweep.study.fresh_process."""
