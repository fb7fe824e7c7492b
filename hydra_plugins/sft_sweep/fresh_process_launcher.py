"""Registration shim: Hydra loads launchers only from the `hydra_plugins` namespace package.
The implementation lives in sweep/fresh_process.py."""

from sweep.fresh_process import FreshProcessLauncher as _FreshProcessLauncher


class FreshProcessLauncher(_FreshProcessLauncher):
    """Each job of a multirun in a new process; see sweep.fresh_process."""
