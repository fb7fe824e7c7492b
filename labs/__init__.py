"""Labs: experiments on the model itself that load weights and log their own runs (not reports on
recorded runs, which live in analysis/)."""
