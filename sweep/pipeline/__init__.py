"""The recipes on top: a job (config -> build -> train -> score -> record), run names,
reproduction of a recorded run and the command line's override checks. Nothing imports it but
the entry points (sweep.py, reproduce.py) and the launchers that run a job."""
