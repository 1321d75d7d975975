"""Reinforcement learning for LMMs: PPO (Fact-RLHF) and the critic-free ReMax, RLOO and GRPO.

* :mod:`mmalign.rl.prompts` — :func:`load_prompts` (LLaVA-RLHF's PPO prompts with their
  ``image_to_caption.json``, our LLaVA records with ``captions`` / ``answer``, ShapeWorld prompts);
* :mod:`mmalign.rl.rewards` — the factually augmented reward prompt and LLaVA-RLHF's shaping terms;
* :mod:`mmalign.rl.reward_fns` / :mod:`mmalign.rl.reward_sources` — verifiable reward functions
  (``module:function``, the exact ShapeWorld judge) and their weighted sum with the reward model;
* :mod:`mmalign.rl.advantages` — GAE, whitening over all ranks, KL controllers;
  :mod:`mmalign.rl.baselines` — ReMax / RLOO / GRPO sequence advantages;
* :mod:`mmalign.rl.rollout` — sample, score (policy, reference, value) and reward a batch of prompts;
* :mod:`mmalign.rl.ppo` — the clipped update of a rollout (losses in :mod:`mmalign.losses.ppo`);
* :mod:`mmalign.rl.actor_critic` — policy and value as two LoRA adapters on one base; the engines
  of a run behind one interface;
* :mod:`mmalign.rl.config` — :class:`PPOConfig` and its presets (``llava_rlhf``, ``remax``,
  ``rloo``, ``grpo``).
"""

from mmalign.rl.prompts import RLPrompt, check_facts, load_prompts

__all__ = ["RLPrompt", "check_facts", "load_prompts"]
