"""Reinforcement learning for LMMs: prompts with their facts, reward shaping, rollouts, advantages, PPO.

* :mod:`mmalign.rl.prompts` — :func:`load_prompts` (LLaVA-RLHF's PPO prompts with their
  ``image_to_caption.json``, our LLaVA records with ``captions`` / ``answer``, ShapeWorld prompts);
* :mod:`mmalign.rl.rewards` — the factually augmented reward prompt and LLaVA-RLHF's shaping terms;
* :mod:`mmalign.rl.advantages` — GAE, whitening over all ranks, KL controllers;
* :mod:`mmalign.rl.rollout` — sample, score (policy, reference, value) and reward a batch of prompts;
* :mod:`mmalign.rl.ppo` — the clipped PPO update of a rollout (losses in :mod:`mmalign.losses.ppo`);
* :mod:`mmalign.rl.config` — :class:`PPOConfig` and its ``llava_rlhf`` preset.
"""

from mmalign.rl.prompts import RLPrompt, check_facts, load_prompts

__all__ = ["RLPrompt", "check_facts", "load_prompts"]
