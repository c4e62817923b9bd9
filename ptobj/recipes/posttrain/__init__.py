"""Post-training on exported models: online RL with the pretraining mix (RLOO / PPO-ptx), DPO."""
