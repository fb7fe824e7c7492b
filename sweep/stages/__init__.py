"""The pipeline's stages (conf/stage): the table that names each one, their trainers (SFT, reward
model, DPO, GRPO/RLOO through TRL, and PPO, which TRL 1.x no longer has), the preference data they
read, judged scoring of replies and the lineage that chains one stage to the next."""
