"""The launcher (conf/hydra/launcher): each job of a multirun in a process of its own, forked from a
server that imported the libraries once. It knows jobs, not studies: nothing here imports sweep.study."""
