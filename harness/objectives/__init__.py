"""Objectives: what trains the model, one module per trainer (conf/objective/*.yaml names the class).

cls (transformers Trainer) · sft, reward, dpo (TRL, through causal.TRLObjective) ·
ppo (the project's own, on ppo_math) · online (TRL's RLOO and GRPO). base holds
what they share; generation the evaluation every generative objective gets.
"""
