"""What trains: the model and tokenizer (conf/model), the method that wraps it (conf/method,
conf/lora, conf/prompt) and the supervised fine-tuning loop (conf/train)."""
