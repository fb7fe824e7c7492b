"""Store maintenance, run by hand or by a team's operator rather than by a job: `make check-store`
(integrity), `make upload` (an adapter a run could not store) and `make promote` (a run's adapter to
the model registry). They read the store through sweep/vocabulary.py, as everything else does."""
