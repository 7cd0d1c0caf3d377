"""Objectives: what trains the model, one module per trainer (conf/objective/*.yaml names the class).

cls (transformers Trainer) · sft, reward, dpo (TRL, through trl_trainers.TRLObjective) ·
ppo (the project's own, on ppo_math) · online (TRL's RLOO and GRPO); rl_reward is the
reward PPO, RLOO and GRPO train against. base holds what they share (``Objective.fit``,
the one fit sequence, and its typed result ``FittedRun``); generation the evaluation
every generative objective gets.
"""
