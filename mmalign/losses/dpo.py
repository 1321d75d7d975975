"""Direct preference losses on sequence log-probabilities: DPO, cDPO, IPO, hinge, SFT term, POVID.

All functions are pure: they take summed (or length-averaged) log-probabilities of responses
under the policy and the reference and return per-example losses plus the implicit rewards.

* DPO (sigmoid): ``−log σ(β·h)``, ``h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))``
  — Rafailov et al. 2023, https://arxiv.org/abs/2305.18290.
* Conservative DPO (label smoothing ε): ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)`` — the preference
  label is assumed flipped with probability ε (Mitchell 2023, "A note on DPO with noisy
  preferences"); ε = 0 is DPO.
* IPO: ``(h − 1/(2β))²`` — Azar et al. 2023, https://arxiv.org/abs/2310.12036. The paper (and
  TRL) use *length-averaged* log-probs for IPO; pass averaged values to follow it.
* Hinge (SLiC): ``max(0, 1 − β·h)`` — Zhao et al. 2023, https://arxiv.org/abs/2305.10425.
* SFT term: ``γ · NLL(y_w)`` per token of the chosen response (RPO / Hound's DPO+SFT).
* POVID: ``w1·DPO(y_w, y_inject) + w2·DPO(y_w, y_noise)`` — Zhou et al. 2024,
  https://arxiv.org/abs/2402.11411 (the authors' code uses w1 = w2 = 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo", "hinge"]
LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclass
class PreferenceOutput:
    """Per-example losses ``(B,)`` and implicit rewards ``β·(log π − log π_ref)`` (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> PreferenceOutput:
    """The DPO family on sequence log-probs.

    Args:
        policy_chosen / policy_rejected: ``(B,)`` log π(y|x) of chosen / rejected responses.
        ref_chosen / ref_rejected: ``(B,)`` the same under the reference (no gradient needed).
        beta: KL strength β (> 0).
        loss_type: ``sigmoid`` (DPO; with ``label_smoothing`` > 0 it is cDPO), ``ipo`` or ``hinge``.
        label_smoothing: ε ∈ [0, 0.5) for cDPO; only with ``sigmoid``.

    Returns:
        :class:`PreferenceOutput` with ``(B,)`` losses.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError("label_smoothing (cDPO) applies to the sigmoid loss only")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; one of {LOSS_TYPES}")
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * (policy_chosen - ref_chosen)).detach(),
        rejected_rewards=(beta * (policy_rejected - ref_rejected)).detach(),
    )


def sft_term(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-example NLL of the chosen response, averaged over its tokens: ``(B,)``.

    Args:
        chosen_logps: ``(B,)`` summed log π(y_w|x).
        chosen_lengths: ``(B,)`` number of response tokens (≥ 1).
    """
    return -chosen_logps / chosen_lengths.clamp(min=1).to(chosen_logps.dtype)


def povid_loss(
    policy_chosen: torch.Tensor,
    policy_inject: torch.Tensor,
    policy_noise: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_inject: torch.Tensor,
    ref_noise: torch.Tensor,
    beta: float = 0.1,
    inject_weight: float = 0.5,
    noise_weight: float = 0.5,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, PreferenceOutput, PreferenceOutput]:
    """POVID's two-term objective ``w1·DPO(y_w, y_inject) + w2·DPO(y_w, y_noise)``, per example.

    Returns:
        ``(losses (B,), inject term, noise term)``.
    """
    inject = dpo_loss(policy_chosen, policy_inject, ref_chosen, ref_inject, beta, loss_type, label_smoothing)
    noise = dpo_loss(policy_chosen, policy_noise, ref_chosen, ref_noise, beta, loss_type, label_smoothing)
    return inject_weight * inject.losses + noise_weight * noise.losses, inject, noise


def preference_metrics(out: PreferenceOutput, prefix: str = "") -> dict[str, float]:
    """Mean chosen/rejected rewards, margin and accuracy (share with chosen reward > rejected)."""
    margin = out.chosen_rewards - out.rejected_rewards
    return {
        f"{prefix}rewards/chosen": float(out.chosen_rewards.float().mean()),
        f"{prefix}rewards/rejected": float(out.rejected_rewards.float().mean()),
        f"{prefix}rewards/margin": float(margin.float().mean()),
        f"{prefix}rewards/accuracy": float((margin > 0).float().mean()),
    }
