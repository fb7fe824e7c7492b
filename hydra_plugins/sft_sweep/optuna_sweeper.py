"""Registration shim: Hydra loads sweepers only from the `hydra_plugins` namespace package, and it
imports every plugin module whenever it composes a config (even one it is about to refuse), so the
implementation (sweep/study/optuna_sweeper.py: Optuna, MLflow, seconds of imports) is imported only
when a sweep makes its sweeper."""

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """Optuna sweeper for sft-sweep; see sweep.study.optuna_sweeper. Making one makes the
    implementation's; the methods below only keep Hydra's plugin scan from taking the class for
    abstract (and skipping it)."""

    def __new__(cls, *args, **kwargs):
        from sweep.study.optuna_sweeper import OptunaSweeper as Implementation

        return Implementation(*args, **kwargs)

    def setup(self, *args, **kwargs) -> None:
        raise NotImplementedError

    def sweep(self, arguments) -> None:
        raise NotImplementedError
