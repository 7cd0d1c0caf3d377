"""Objectives: one module per trainer (classification now; SFT, reward, DPO, PPO to come)."""
