"""Bradley–Terry reward-model loss (InstructGPT, LLaVA-RLHF), with an optional margin (Llama 2).

``L = −log σ(r_w − r_l − m)``: the probability that the chosen response wins is
``σ(r_w − r_l)``; a margin ``m ≥ 0`` per pair asks for a larger gap on clearer preferences
(Touvron et al. 2023, https://arxiv.org/abs/2307.09288).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Per-pair loss ``(B,)``.

    Args:
        chosen_rewards / rejected_rewards: ``(B,)`` scalar rewards.
        margin: ``(B,)`` or a float subtracted from the difference (None = 0).
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """Accuracy (chosen scored higher), mean rewards and margin."""
    diff = (chosen_rewards - rejected_rewards).detach().float()
    return {
        "reward/accuracy": float((diff > 0).float().mean()),
        "reward/chosen": float(chosen_rewards.detach().float().mean()),
        "reward/rejected": float(rejected_rewards.detach().float().mean()),
        "reward/margin": float(diff.mean()),
    }
