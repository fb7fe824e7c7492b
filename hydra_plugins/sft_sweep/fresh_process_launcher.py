"""Registration shim: Hydra loads launchers only from the `hydra_plugins` namespace package.
The implementation lives in sweep/launcher/fresh_process.py."""

from sweep.launcher.fresh_process import FreshProcessLauncher as _FreshProcessLauncher


class FreshProcessLauncher(_FreshProcessLauncher):
    """Each job of a multirun in a new process; see sweep.launcher.fresh_process."""
