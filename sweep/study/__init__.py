"""Sweeps over jobs (conf/hparams_search, conf/hydra): the Optuna sweeper and its search space,
the hand-off of a trial to its job, the study's MLflow runs and the fresh-process launcher."""
