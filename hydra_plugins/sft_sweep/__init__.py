"""sft-sweep's Hydra plugins (discovered by Hydra under the hydra_plugins namespace)."""
