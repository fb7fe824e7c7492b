"""Registration shim: Hydra loads sweepers only from the `hydra_plugins` namespace package.
The implementation lives in sweep/study/optuna_sweeper.py."""

from sweep.study.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """Optuna sweeper for sft-sweep; see sweep.study.optuna_sweeper."""
