"""A task's examples: their roles (train, development, test) and how training examples are
rendered, tokenized and mixed with generated ones (conf/data)."""
