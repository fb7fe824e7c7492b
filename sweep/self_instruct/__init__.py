"""Self-Instruct data generation (generate_instructions.py): the paper's prompts and filters and
the generator's loop."""
