"""Reports over recorded runs: tables and plots that compare methods and settings."""
