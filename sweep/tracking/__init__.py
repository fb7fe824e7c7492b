"""Recording to MLflow: the store, a run's lifecycle, what a run records, and verified reuse of what
earlier runs recorded."""
