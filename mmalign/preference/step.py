"""One training step of each preference method as a library function: DPO family / POVID and the
Bradley–Terry reward model. Used by ``train/dpo.py``, ``train/reward.py``, the benchmark against
TRL, and (later) i-SRT, which calls the DPO step directly.

A step is: forward the model (a DeepSpeed engine or the plain module — anything called as
``model(batch)``) on a shared-prefix :class:`~mmalign.preference.batch.PreferenceBatch`, compute the
loss with the pure functions of :mod:`mmalign.losses`, return ``(loss, metrics)``. Backward and the
optimizer step stay with the caller (:class:`~mmalign.training.strategy.Strategy`).
POVID's two-term loss is chosen by the config (``povid.noise_weight > 0``), never by the shape of
a tensor: a batch that does not carry the three responses POVID needs is an error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mmalign.losses.dpo import dpo_loss, povid_loss, preference_metrics, sft_term
from mmalign.losses.reward import bradley_terry_loss, reward_metrics
from mmalign.preference.batch import PreferenceBatch
from mmalign.preference.config import DPOConfig


def uses_povid(cfg: DPOConfig) -> bool:
    """POVID's two-term objective (``[chosen | rejected | y_noise]`` rows) vs plain DPO pairs."""
    return cfg.povid.noise_weight > 0


def preference_loss(
    policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, cfg: DPOConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The DPO-family / POVID loss of a batch from summed log-probs (pure).

    Args:
        policy: ``(P, K)`` summed policy log-probs (K = 2: chosen, rejected; K = 3 with POVID's
            ``y_noise``), with grad.
        reference: ``(P, K)`` reference log-probs (no grad).
        lengths: ``(P, K)`` scored tokens per response (length averaging, the SFT term).
        cfg: β, loss type, label smoothing, length averaging, SFT weight and POVID's weights.

    Returns:
        The mean loss (scalar) and float metrics (rewards, accuracy, margins; ``noise/…`` for
        POVID's second term; ``sft_nll`` with an SFT term).

    Raises:
        ValueError: K does not match the method the config names.
    """
    want = 3 if uses_povid(cfg) else 2
    if policy.shape[1] != want:
        method = "POVID (povid.noise_weight > 0)" if want == 3 else "DPO"
        raise ValueError(f"{method} needs {want} responses per prompt, the batch has {policy.shape[1]}")
    summed = policy
    if cfg.average_log_prob:
        policy, reference = policy / lengths.clamp(min=1), reference / lengths.clamp(min=1)
    kw = {"beta": cfg.beta, "loss_type": cfg.loss_type, "label_smoothing": cfg.label_smoothing}
    if want == 3:
        losses, term, noise_term = povid_loss(
            *policy.unbind(1),
            *reference.unbind(1),
            inject_weight=cfg.povid.inject_weight,
            noise_weight=cfg.povid.noise_weight,
            **kw,
        )
        metrics = {**preference_metrics(term), **preference_metrics(noise_term, "noise/")}
    else:
        term = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], **kw)
        losses, metrics = term.losses, preference_metrics(term)
    loss = losses.mean()
    if cfg.sft_weight:
        sft = sft_term(summed[:, 0], lengths[:, 0]).mean()
        loss = loss + cfg.sft_weight * sft
        metrics["sft_nll"] = float(sft.detach())
    return loss, metrics


def preference_step(
    model: Callable[[PreferenceBatch], dict[str, torch.Tensor]],
    batch: PreferenceBatch,
    reference: torch.Tensor | None,
    cfg: DPOConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward a :class:`~mmalign.preference.scoring.PreferenceModel` (or its engine) and compute
    the preference loss.

    Args:
        model: called as ``model(batch)``; returns ``policy`` ``(P, K)`` log-probs and, with an
            online reference, ``reference``.
        batch: the shared-prefix rows, on the model's device.
        reference: ``(P, K)`` precomputed reference log-probs, or None to use the model's online
            reference (``frozen`` / ``lora``).
        cfg: the run's :class:`~mmalign.preference.config.DPOConfig`.

    Returns:
        ``(loss, metrics)`` — the loss is not yet backpropagated.
    """
    result = model(batch)
    policy = result["policy"]
    if reference is None:
        if "reference" not in result:
            raise ValueError("no reference log-probs: pass precomputed ones or use an online reference")
        reference = result["reference"]
    lengths = batch.lengths().view(policy.shape).to(policy.device)
    return preference_loss(policy, reference.to(policy.device), lengths, cfg)


def reward_step(
    model: Callable[[PreferenceBatch], torch.Tensor],
    batch: PreferenceBatch,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley–Terry step of a :class:`~mmalign.preference.reward_model.RewardModel` (or its engine).

    Args:
        model: called as ``model(batch)`` → ``(P, 2)`` rewards (chosen, rejected).
        margin: ``(P,)`` or a float margin ``m`` in ``−log σ(r_w − r_l − m)``.

    Returns:
        The mean loss and the metrics of :func:`~mmalign.losses.reward.reward_metrics`.
    """
    rewards = model(batch)
    loss = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin).mean()
    return loss, reward_metrics(rewards[:, 0], rewards[:, 1])
