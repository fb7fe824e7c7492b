"""The process a job runs in: secrets kept out of logs, child processes, memory, signals and
uninterruptible writes, files and hashes, the Hydra job's own helpers, distributed ranks.
Imports nothing from sweep/ but `config`."""
