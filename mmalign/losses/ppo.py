"""PPO losses for RLHF on token sequences: clipped policy and value losses, KL estimators, entropy.

Sources:
    - PPO, clipped surrogate objective: Schulman et al. 2017, https://arxiv.org/abs/1707.06347
    - LLaVA-RLHF (Factually Augmented RLHF): Sun et al. 2023, https://arxiv.org/abs/2309.14525;
      reference code ``RLHF/models/ppo_trainer.py`` (``compute_policy_loss``, ``compute_value_loss``,
      ``_shape_reward``), itself from AlpacaFarm.
    - KL estimators k1/k2/k3: John Schulman, "Approximating KL divergence" (2020),
      http://joschu.net/blog/kl-approx.html
    - The critic-free family's loss aggregations: GRPO, Shao et al. 2024 (DeepSeekMath),
      https://arxiv.org/abs/2402.03300 (section 4.1); DAPO, Yu et al. 2025, https://arxiv.org/abs/2503.14476
      (token-level mean; asymmetric "clip-higher" ranges); Dr. GRPO, Liu et al. 2025,
      https://arxiv.org/abs/2503.20783 (a constant normaliser); as TRL's ``GRPOTrainer`` computes them
      (``loss_type``, ``epsilon`` / ``epsilon_high``).

Conventions: every per-token tensor is a padded ``(B, T)`` float tensor next to a ``(B, T)`` mask
(bool or float; nonzero = a real response token, read as bool — masks are not weights). Masks are
normally suffix padding (ones then zeros) but any pattern is handled. Values at masked-out positions
never reach a result, even when they are inf or nan (``torch.where``, not multiplication).

Departures from LLaVA-RLHF's code: statistics (clip fractions, approx KL, ratio) are masked means over
real tokens, where LLaVA-RLHF averages over the whole buffer; the loss reduction is a choice
(``aggregation``), with ``"all_positions"`` reproducing LLaVA-RLHF's ``.mean()`` over the buffer.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["token_mean", "sequence_mean", "all_positions", "grpo", "dapo", "dr_grpo"]
KLEstimator = Literal["k1", "k2", "mse", "k3", "abs"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "sequence_mean", "all_positions", "grpo", "dapo", "dr_grpo")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "mse", "k3", "abs")


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is nonzero.

    Args:
        x: ``(B, T)`` (any shape) float tensor.
        mask: same shape as ``x``, bool or float; nonzero = counted.
        dim: reduce over this dimension only; None = over all elements (a scalar).

    Returns:
        A scalar (``dim=None``) or ``x`` reduced over ``dim``, dtype of ``x``. Differentiable.
    """
    kept = _zero_masked(x, mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x · mask) / max(sum(mask), 1)``: the mean over real positions; 0 where there are none.

    Args:
        x: ``(B, T)`` (any shape) float tensor.
        mask: same shape as ``x``, bool or float; nonzero = counted (read as bool).
        dim: reduce over this dimension only (e.g. ``-1``: one mean per sequence, ``(B,)``);
            None = over all elements (a scalar).

    Returns:
        A scalar or ``x`` reduced over ``dim``, dtype of ``x``. Differentiable.
    """
    count = mask.bool().to(x.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    aggregation: Aggregation,
    max_tokens: int | None = None,
    num_tokens: float | None = None,
) -> torch.Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    Args:
        per_token: ``(B, T)`` float loss per position.
        mask: ``(B, T)`` bool/float, nonzero = real token.
        aggregation: ``"token_mean"``: mean over all real tokens of the batch (every token weighs the
            same; long responses weigh more). ``"sequence_mean"``: mean within each sequence, then the
            mean over sequences that have at least one real token (every sequence weighs the same).
            ``"all_positions"``: sum over real tokens divided by ``B · T``, the size of the padded
            buffer — LLaVA-RLHF's ``.mean()`` over the buffer, which makes the scale depend on the
            padding length. Padding contributes 0 here; pass an all-ones mask to also include
            whatever sits in the padded positions, exactly as LLaVA-RLHF's code does.
            The GRPO family, as TRL's ``GRPOTrainer`` names its ``loss_type``:
            ``"grpo"``: mean within each sequence, then the mean over **all** B sequences (a sequence
            without real tokens counts as 0 — TRL's formula; ``"sequence_mean"`` skips it instead).
            ``"dapo"``: sum over the real tokens divided by their number — the token mean
            (``"token_mean"``), or divided by ``num_tokens`` when given (see there).
            ``"dr_grpo"``: sum over the real tokens divided by ``B · max_tokens``, a constant
            normaliser independent of the response lengths (Dr. GRPO).
        max_tokens: ``"dr_grpo"`` only (required there, ignored otherwise): the constant per-sequence
            length, e.g. the generation's ``max_new_tokens``, ≥ 1. Not checked against ``T``.
        num_tokens: ``"dapo"`` only (ignored otherwise): the denominator instead of this call's real
            tokens, > 0 — e.g. the real tokens of the whole optimiser batch over all micro-batches
            and ranks, divided by the world size, which is TRL's normaliser when ranks' gradients are
            averaged and micro-batch losses summed. None = this call's real tokens (clamped at 1).

    Returns:
        A scalar of ``per_token``'s dtype; 0 when the mask is empty.

    Raises:
        ValueError: unknown ``aggregation``; ``"dr_grpo"`` without a positive ``max_tokens``;
            ``"dapo"`` with a non-positive ``num_tokens``.
    """
    if aggregation == "token_mean":
        return masked_mean(per_token, mask)
    if aggregation == "sequence_mean":
        per_seq = masked_mean(per_token, mask, dim=-1)
        has_tokens = mask.bool().any(dim=-1)
        return masked_mean(per_seq, has_tokens)
    if aggregation == "all_positions":
        return masked_sum(per_token, mask) / max(per_token.numel(), 1)
    if aggregation == "grpo":
        return masked_mean(per_token, mask, dim=-1).mean() if per_token.shape[0] else per_token.sum()
    if aggregation == "dapo":
        if num_tokens is None:
            return masked_mean(per_token, mask)
        if not num_tokens > 0:
            raise ValueError(f"aggregation 'dapo' needs num_tokens > 0 or None, got {num_tokens}")
        return masked_sum(per_token, mask) / num_tokens
    if aggregation == "dr_grpo":
        if max_tokens is None or max_tokens < 1:
            raise ValueError(
                f"aggregation 'dr_grpo' needs max_tokens >= 1 (e.g. max_new_tokens), got {max_tokens}"
            )
        return masked_sum(per_token, mask) / max(per_token.shape[0] * max_tokens, 1)
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
    aggregation: Aggregation = "token_mean",
    max_tokens: int | None = None,
    clip_range_high: float | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (Schulman et al. 2017, eq. 7, negated to be minimised).

    Per token: ``ratio = exp(logprobs − old_logprobs)``,
    ``loss_t = max(−A_t · ratio_t, −A_t · clip(ratio_t, 1 − ε, 1 + ε_high))`` (``ε_high = ε`` unless
    ``clip_range_high`` is given: DAPO's clip-higher). Where the clipped term is the larger
    (strictly), the loss is constant in ``logprobs`` and the token gets no gradient.
    ``clip_range=None``: no clipping, ``loss_t = −A_t · ratio_t`` — REINFORCE with an importance
    ratio (ReMax and RLOO take one step per rollout, where the ratio is 1 in value and its gradient
    is the policy gradient ``−A_t · ∇ log π``).

    Args:
        logprobs: ``(B, T)`` float, log-probabilities (nats) of the sampled tokens under the current
            policy; carries the gradient.
        old_logprobs: ``(B, T)`` float, the same under the policy that sampled them (detached).
        advantages: ``(B, T)`` float, usually whitened GAE advantages (detached).
        mask: ``(B, T)`` bool/float, nonzero = real response token.
        clip_range: ε > 0 (the lower range, and the upper one unless ``clip_range_high``); None = no
            clipping.
        aggregation: see :func:`aggregate`.
        max_tokens: passed to :func:`aggregate` (``"dr_grpo"``).
        clip_range_high: ε_high > 0, the upper range ``1 + ε_high`` (DAPO uses ε = 0.2, ε_high = 0.28);
            None = ``clip_range``. Needs ``clip_range``.
        num_tokens: passed to :func:`aggregate` (``"dapo"``).

    Returns:
        ``(loss, stats)``: the scalar loss and detached scalar statistics over real tokens:
        ``clip_fraction`` (share of tokens where the clipped term is strictly larger, i.e. active; 0
        without clipping),
        ``approx_kl`` (mean of ``0.5 · (logprobs − old_logprobs)²``, the k2 estimator of the policy's
        drift), ``ratio_mean`` and ``ratio_max`` (``ratio_max`` is 0 when the mask is empty).

    Raises:
        ValueError: ``clip_range`` ≤ 0, ``clip_range_high`` ≤ 0 or given without ``clip_range``, or
            an invalid ``aggregation`` (see :func:`aggregate`).
    """
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    if clip_range_high is not None and (clip_range is None or clip_range_high <= 0):
        raise ValueError(f"clip_range_high must be > 0 and needs a clip_range, got {clip_range_high}")
    # Zero the padding before any arithmetic, so a nan/inf there cannot reach the loss or its gradient.
    log_ratio = _zero_masked(logprobs - old_logprobs, mask)
    advantages = _zero_masked(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    if clip_range is None:
        clipped = per_token = unclipped
    else:
        high = clip_range if clip_range_high is None else clip_range_high
        clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + high)
        per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation, max_tokens=max_tokens, num_tokens=num_tokens)
    with torch.no_grad():
        m = mask.bool()
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), m),
            "approx_kl": masked_mean(0.5 * log_ratio.float() ** 2, m),
            "ratio_mean": masked_mean(ratio.float(), m),
            "ratio_max": ratio.float()[m].max() if m.any() else torch.zeros((), device=ratio.device),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None = 0.2,
    aggregation: Aggregation = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (PPO2 baselines; LLaVA-RLHF ``compute_value_loss``).

    ``v_clip = old_values + clamp(values − old_values, −ε, ε)``;
    ``loss = 0.5 · aggregate(max((values − R)², (v_clip − R)²))``.

    Args:
        values: ``(B, T)`` float, current value-head predictions; carries the gradient.
        old_values: ``(B, T)`` float, the predictions at rollout time (detached).
        returns: ``(B, T)`` float, the targets R (e.g. GAE returns; detached).
        mask: ``(B, T)`` bool/float, nonzero = real response token.
        clip_range: ε > 0 in the units of the values; None = unclipped ``0.5 · (values − R)²``.
        aggregation: see :func:`aggregate`.

    Returns:
        ``(loss, stats)``: the scalar loss and detached scalars ``value_clip_fraction`` (share of real
        tokens where the clipped error is strictly larger; 0 when unclipped) and ``value_error``
        (masked mean of ``(values − R)²``).

    Raises:
        ValueError: ``clip_range`` ≤ 0 or unknown ``aggregation``.
    """
    if clip_range is not None and clip_range <= 0:
        raise ValueError(f"clip_range must be > 0 or None, got {clip_range}")
    values, old_values, returns = (_zero_masked(t, mask) for t in (values, old_values, returns))
    err = (values - returns) ** 2
    if clip_range is None:
        per_token, clip_active = err, torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip_range, clip_range)
        err_clip = (v_clip - returns) ** 2
        per_token, clip_active = torch.maximum(err, err_clip), err_clip > err
    loss = 0.5 * aggregate(per_token, mask, aggregation)
    with torch.no_grad():
        stats = {
            "value_clip_fraction": masked_mean(clip_active.float(), mask),
            "value_error": masked_mean(err.detach().float(), mask),
        }
    return loss, stats


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    estimator: KLEstimator = "k1",
    clamp_min: float | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from the log-probabilities of tokens sampled from π.

    With ``d = logprobs − ref_logprobs`` (nats): ``"k1"`` = d (unbiased, can be negative);
    ``"k2"``/``"mse"`` = ``0.5 · d²`` (biased, low variance, ≥ 0); ``"k3"`` = ``exp(−d) + d − 1``
    (unbiased, ≥ 0; Schulman's blog); ``"abs"`` = ``|d|``. "Unbiased" means the expectation over
    tokens sampled from π equals KL(π ‖ π_ref). LLaVA-RLHF uses k1 clamped at 0 (``clamp_min=0``)
    or k3.

    Args:
        logprobs: ``(B, T)`` (any shape) float, log-probabilities under the policy π.
        ref_logprobs: same shape, under the reference policy.
        estimator: one of ``"k1"``, ``"k2"``, ``"mse"``, ``"k3"``, ``"abs"``.
        clamp_min: if given, the result is clamped below at this value.

    Returns:
        Same shape and dtype as ``logprobs``; no masking (multiply by the mask downstream).

    Raises:
        ValueError: unknown ``estimator``.
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        kl = d
    elif estimator in ("k2", "mse"):
        kl = 0.5 * d**2
    elif estimator == "k3":
        kl = torch.expm1(-d) + d  # exp(ref − lp) − (ref − lp) − 1, with expm1 for accuracy near 0
    elif estimator == "abs":
        kl = d.abs()
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")
    return kl if clamp_min is None else kl.clamp(min=clamp_min)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the categorical distribution ``softmax(logits)`` over the last dimension.

    ``H = −Σ p · log p`` with ``log p = z − logsumexp(z)``, computed in float32 after subtracting
    the row maximum; ``-inf`` logits (masked vocabulary entries) contribute 0.

    Args:
        logits: ``(..., V)`` float tensor of any float dtype, e.g. ``(B, T, V)``.

    Returns:
        ``(...)`` float32 entropies in ``[0, log V]``.
    """
    z = logits.float()
    shift = z.detach().amax(dim=-1, keepdim=True)  # exact shift: lse and z − lse stay small
    z = z - torch.where(torch.isfinite(shift), shift, torch.zeros((), device=z.device))
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    logp = z - lse
    p = torch.exp(logp)
    return -torch.where(p > 0, p * logp, torch.zeros((), device=z.device)).sum(dim=-1)
