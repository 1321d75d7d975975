"""Sequence advantages without a value model: ReMax, RLOO and GRPO baselines.

Every estimator here gives one advantage per *sequence* (response) from its scalar reward; the
policy loss then puts that advantage on every token of the response (:func:`broadcast_to_tokens`)
and no value model is trained.

Sources:
    - ReMax: Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method
      for Aligning Large Language Models", https://arxiv.org/abs/2310.10505; code
      https://github.com/liziniu/ReMax — the baseline is the reward of the greedy response to the same
      prompt: ``A = r(sampled) − r(greedy)``.
    - RLOO: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
      Learning from Human Feedback in LLMs", https://arxiv.org/abs/2402.14740 (eq. 7; Kool et al. 2019)
      — K samples per prompt, each baselined by the mean reward of the other K − 1.
    - GRPO: Shao et al. 2024, DeepSeekMath, https://arxiv.org/abs/2402.03300 (section 4.1.2, outcome
      supervision) — ``A = (r − mean_group) / std_group``.
    - Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", https://arxiv.org/abs/2503.20783
      — no division by the std (``scale="none"``), which biases towards questions of low variance.
    - "batch" scaling (group mean, std of the whole batch): TRL's ``GRPOConfig.scale_rewards="batch"``
      (after Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
      https://arxiv.org/abs/2508.08221). The formulas follow TRL's ``GRPOTrainer._generate_and_score_completions``
      (unbiased ``std``; ``eps = 1e-4`` added to the std, not the variance).

Layout: rewards of a rollout come as a ``(G, K)`` float tensor, G prompts × K responses, prompt-major
as the rollout orders them (sequence ``s = g · K + k``; ``rewards.view(G, K)`` of the flat ``(S,)``
rewards, and ``advantages.reshape(-1)`` back). A prompt's K responses must sit on one rank.

Exact zeros: each estimator is computed on ``r − r[:, :1]`` (every group shifted by its first reward;
all formulas are shift-invariant), so a group whose K rewards are all equal gets advantages that are
exactly 0, never a rounding residue such as ``0.1 − (0.1 + 0.1 + 0.1 − 0.1) / 2 ≠ 0``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist

RewardScale = Literal["group", "batch", "none"]
REWARD_SCALES: tuple[str, ...] = ("group", "batch", "none")


def _float(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a float dtype (at least float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_groups(rewards: torch.Tensor, min_k: int, name: str) -> torch.Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"{name}: rewards must be (G, K), got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < min_k:
        raise ValueError(
            f"{name} needs K >= {min_k} responses per prompt, got rewards of shape {tuple(rewards.shape)}"
        )
    return _float(rewards)


def _shifted(rewards: torch.Tensor) -> torch.Tensor:
    """Each group minus its first reward: equal groups become exact zeros (module docstring)."""
    return rewards - rewards[:, :1]


def remax_advantages(sample_rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax advantages: the sampled response's reward minus the greedy response's reward.

    ``A_g = r(y_g ~ π) − r(ȳ_g)`` with ``ȳ_g`` the greedy (argmax) decoding of prompt g (Li et al. 2023,
    Algorithm 1). Exactly 0 where the two rewards are equal (e.g. the sample *is* the greedy response).

    Args:
        sample_rewards: ``(G,)`` float rewards of the sampled responses.
        greedy_rewards: ``(G,)`` float rewards of the greedy responses to the same prompts.

    Returns:
        ``(G,)`` advantages, float (at least float32), no gradient expected.

    Raises:
        ValueError: the inputs are not two 1-D tensors of one shape.
    """
    if sample_rewards.dim() != 1 or sample_rewards.shape != greedy_rewards.shape:
        raise ValueError(
            f"remax_advantages needs two (G,) tensors, got {tuple(sample_rewards.shape)} and "
            f"{tuple(greedy_rewards.shape)}"
        )
    return _float(sample_rewards) - _float(greedy_rewards)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO advantages: each reward minus the mean reward of the other K − 1 responses to its prompt.

    ``A_{g,i} = r_{g,i} − 1/(K−1) · Σ_{j≠i} r_{g,j} = K/(K−1) · (r_{g,i} − mean_g)`` (Ahmadian et al.
    2024, eq. 7). The advantages of a group sum to 0; a group whose rewards are all equal gets 0.

    Args:
        rewards: ``(G, K)`` float rewards, G prompts × K responses (prompt-major).

    Returns:
        ``(G, K)`` advantages, float (at least float32).

    Raises:
        ValueError: ``rewards`` is not 2-D, or K < 2 (no other response to baseline with).
    """
    r = _shifted(_check_groups(rewards, 2, "rloo_advantages"))
    k = r.shape[1]
    return r - (r.sum(dim=1, keepdim=True) - r) / (k - 1)


def _world_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _batch_std(rewards: torch.Tensor) -> torch.Tensor:
    """Unbiased std of all rewards of all ranks (float64 sums, as ``advantages.whiten`` reduces)."""
    r = rewards.to(torch.float64)
    totals = _world_sum(
        torch.stack([r.sum(), torch.tensor(float(r.numel()), dtype=torch.float64, device=r.device)])
    )
    n = float(totals[1])
    if n < 2:  # cannot happen with K >= 2; kept so a caller's empty batch reads clearly
        raise ValueError(f"scale='batch' needs at least 2 rewards over all ranks, got {n:.0f}")
    mean = totals[0] / n
    var = _world_sum(((r - mean) ** 2).sum()) / (n - 1)
    return var.sqrt().to(rewards.dtype)


def grpo_advantages(rewards: torch.Tensor, scale: RewardScale = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: rewards centred on their group's mean, divided by a standard deviation.

    ``A_{g,i} = (r_{g,i} − mean_g) / (σ + eps)`` with σ chosen by ``scale``:

    - ``"group"``: the std of the group's K rewards (unbiased, divisor K − 1, as ``torch.std`` in TRL;
      DeepSeekMath section 4.1.2);
    - ``"batch"``: the std of all rewards of the batch — raw rewards, not centred per group, unbiased
      (TRL's ``scale_rewards="batch"``). When ``torch.distributed`` is initialised the std is over the
      rewards of *all ranks* (two ``all_reduce`` SUMs in float64: ``[Σr, n]``, then ``Σ(r − mean)²``),
      so every rank must call this together, and under NCCL ``rewards`` must be on the GPU; the group
      mean stays local (a prompt's K responses sit on one rank);
    - ``"none"``: no division, ``A = r − mean_g`` (Dr. GRPO; ``eps`` unused).

    A group whose rewards are all equal gets advantages of exactly 0 whatever the scale (no learning
    signal; :func:`equal_reward_share` measures how often). K = 1 is refused: a group of one is its own
    baseline (every advantage 0) and its unbiased std is undefined — TRL likewise requires at least 2
    generations per prompt for training.

    Args:
        rewards: ``(G, K)`` float rewards, G prompts × K responses (prompt-major).
        scale: ``"group"``, ``"batch"`` or ``"none"``.
        eps: added to σ (units of the reward), > 0 keeps equal groups finite; TRL uses 1e-4.

    Returns:
        ``(G, K)`` advantages, float (at least float32).

    Raises:
        ValueError: ``rewards`` not 2-D, K < 2, an unknown ``scale`` or a negative ``eps``.
    """
    if scale not in REWARD_SCALES:
        raise ValueError(f"unknown reward scale {scale!r}; expected one of {REWARD_SCALES}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    raw = _check_groups(rewards, 2, "grpo_advantages")
    r = _shifted(raw)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    std = r.std(dim=1, keepdim=True) if scale == "group" else _batch_std(raw)
    return centred / (std + eps)


def equal_reward_share(rewards: torch.Tensor) -> float:
    """Share of this process's groups whose K rewards are all equal (they give no learning signal).

    A metric (DAPO's "dynamic sampling" filters such groups out: Yu et al. 2025,
    https://arxiv.org/abs/2503.14476; TRL logs it as ``frac_reward_zero_std``). Exact equality; NaN
    never equals anything, so a group holding a NaN counts as not equal. A group of one (K = 1) counts
    as equal.

    Args:
        rewards: ``(G, K)`` rewards, G ≥ 1.

    Returns:
        A Python float in [0, 1].

    Raises:
        ValueError: ``rewards`` is not 2-D or has no group or no response.
    """
    if rewards.dim() != 2 or rewards.numel() == 0:
        raise ValueError(
            f"equal_reward_share needs non-empty (G, K) rewards, got shape {tuple(rewards.shape)}"
        )
    return float((rewards == rewards[:, :1]).all(dim=1).float().mean())


def broadcast_to_tokens(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's advantage on each of its real tokens, 0 at padding.

    Args:
        seq_adv: ``(S,)`` float advantages, one per sequence (e.g. ``grpo_advantages(...).reshape(-1)``).
        mask: ``(S, T)`` bool/float, nonzero = real response token (read as bool).

    Returns:
        ``(S, T)`` tensor of ``seq_adv``'s dtype.

    Raises:
        ValueError: the shapes disagree.
    """
    if seq_adv.dim() != 1 or mask.dim() != 2 or mask.shape[0] != seq_adv.shape[0]:
        raise ValueError(
            f"broadcast_to_tokens needs seq_adv (S,) and mask (S, T), got {tuple(seq_adv.shape)} and "
            f"{tuple(mask.shape)}"
        )
    zero = torch.zeros((), dtype=seq_adv.dtype, device=seq_adv.device)
    return torch.where(mask.bool(), seq_adv[:, None], zero)
