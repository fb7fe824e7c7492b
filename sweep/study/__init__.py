"""Sweeps over jobs (conf/hparams_search, conf/hydra/sweeper): the Optuna sweeper and its settings,
the search space, the trial a job runs under, the study's storage and its MLflow parent run."""
