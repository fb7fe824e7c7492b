"""The RLHF pipeline's stages after SFT (conf/stage): reward model, DPO, GRPO/RLOO, PPO, the
preference data they read, judged scoring of replies and the lineage that chains the stages."""
