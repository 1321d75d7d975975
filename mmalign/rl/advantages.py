"""Advantages, rewards and KL control for PPO on token sequences (RLHF).

Sources:
    - GAE: Schulman et al. 2015, https://arxiv.org/abs/1506.02438
    - PPO: Schulman et al. 2017, https://arxiv.org/abs/1707.06347
    - Per-token KL-shaped reward and the adaptive KL controller: Ziegler et al. 2019,
      https://arxiv.org/abs/1909.08593 (section 2.2)
    - LLaVA-RLHF: Sun et al. 2023, https://arxiv.org/abs/2309.14525; reference code
      ``RLHF/models/ppo_trainer.py`` (``_shape_reward``, ``_estimate_advantage``), from AlpacaFarm.

Conventions: per-token tensors are padded ``(B, T)`` float tensors next to a ``(B, T)`` mask (bool or
float; nonzero = real response token, read as bool). Values at masked-out positions never reach a
result (``torch.where``, not multiplication), and every result is 0 there.

Departures from LLaVA-RLHF's code: GAE and whitening run over real tokens only (LLaVA-RLHF runs GAE
and whitening over the whole fixed-length buffer, padding included — pass an all-ones mask for that);
``whiten`` uses the unbiased variance (AlpacaFarm's ``whiten`` is biased; TRL's ``masked_whiten``
defaults to unbiased) and pools statistics over all ranks when ``torch.distributed`` is initialised.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.distributed as dist

RewardPosition = Literal["eos", "last"]


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's real tokens.

    ``δ_t = r_t + γ · V_{t+1} · m_{t+1} − V_t`` and ``A_t = δ_t + γλ · A_{t+1}`` at real tokens (A = 0
    at padding), so the token after the last real one bootstraps with value 0 (the response ended).
    With a mask that has gaps, each run of real tokens is its own episode: nothing crosses a gap.
    With ``γ = λ = 1``, ``A_t = Σ_{s ≥ t} r_s − V_t`` over the run.

    Args:
        rewards: ``(B, T)`` float per-token rewards (e.g. from :func:`token_rewards`).
        values: ``(B, T)`` float value predictions V_t at rollout time.
        mask: ``(B, T)`` bool/float, nonzero = real response token.
        gamma: discount γ in [0, 1].
        lam: GAE λ in [0, 1].

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` in the promoted dtype of the inputs (at least
        float32), no gradient, 0 at padding; ``returns = advantages + values`` at real tokens.

    Raises:
        ValueError: shapes differ or the inputs are not 2-D.
    """
    if rewards.dim() != 2 or rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(
            f"rewards, values and mask must share one (B, T) shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    m = mask.bool()
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(m, rewards.to(dtype), zero)
    v = torch.where(m, values.to(dtype), zero)
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])  # V_{t+1} · m_{t+1}
    next_adv = torch.zeros_like(r[:, 0])  # A_{t+1} (0 at padding)
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = torch.where(m[:, t], delta + gamma * lam * next_adv, zero)
        advantages[:, t] = next_adv
        next_value = v[:, t]  # already 0 where m[:, t] is False
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def _world_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over the real tokens of the whole batch.

    ``(x − mean) / sqrt(var + eps)`` (plus ``mean`` again when ``shift_mean=False``, as TRL and
    LLaVA-RLHF do for rewards). The mean and the **unbiased** variance (divisor n − 1) are taken over
    all real tokens of all ranks when ``torch.distributed`` is initialised (two ``all_reduce`` SUMs in
    float64: first ``[Σx, n]``, then ``Σ(x − mean)²``), so every rank must call this together; over
    this process's real tokens otherwise. A rank with no real tokens is allowed. The reduced
    statistics live on ``x.device``, so under NCCL ``x`` must be on the GPU (gloo: on the CPU).

    Args:
        x: ``(B, T)`` (any shape) float tensor, e.g. advantages or rewards.
        mask: same shape, bool/float, nonzero = real token.
        shift_mean: False = keep the original mean (only rescale).
        eps: added to the variance (units of ``x`` squared).

    Returns:
        Same shape and dtype as ``x``, no gradient, 0 at padding.

    Raises:
        ValueError: fewer than 2 real tokens in total (all ranks), where the unbiased variance is
            undefined; raised on every rank alike, so no rank is left waiting.
    """
    m = mask.bool()
    x64 = torch.where(m, x.to(torch.float64), torch.zeros((), dtype=torch.float64, device=x.device))
    totals = _world_sum(torch.stack([x64.sum(), m.sum().to(torch.float64)]))
    n = float(totals[1])
    if n < 2:
        raise ValueError(f"whiten needs at least 2 real tokens (over all ranks), got {n:.0f}")
    mean = totals[0] / n
    centred = torch.where(m, x64 - mean, torch.zeros((), dtype=torch.float64, device=x.device))
    var = _world_sum((centred**2).sum()) / (n - 1)
    out = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=torch.float64, device=x.device)).to(x.dtype)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 − Var[R − V] / Var[R]`` over this process's real tokens (a value-head diagnostic).

    1 = perfect predictions; 0 = no better than predicting the mean return; negative = worse.
    Population variances (the n-vs-(n − 1) choice cancels in the ratio).

    Args:
        values: ``(B, T)`` float predictions V.
        returns: ``(B, T)`` float targets R.
        mask: ``(B, T)`` bool/float, nonzero = real token.

    Returns:
        A Python float; ``nan`` when ``Var[R]`` is 0 or there are no real tokens (undefined, as in
        Stable-Baselines3's ``explained_variance``).
    """
    m = mask.bool()
    if not m.any():
        return math.nan
    r = returns.to(torch.float64)[m]
    diff = r - values.to(torch.float64)[m]
    var_r = r.var(unbiased=False)
    if var_r == 0:
        return math.nan
    return float(1.0 - diff.var(unbiased=False) / var_r)


def token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    position: RewardPosition = "eos",
) -> torch.Tensor:
    """Per-token reward: ``−kl_coef · kl`` at real tokens plus the sequence score at one position.

    Ziegler et al. 2019 eq. 2: ``R(x, y) = r(x, y) − β · KL``, with the KL spread over the tokens and
    the reward-model score given at the end.

    Args:
        scores: ``(B,)`` float reward-model scores, one per sequence.
        kl: ``(B, T)`` float per-token KL estimates (e.g. from ``mmalign.losses.ppo.kl_penalty``).
        mask: ``(B, T)`` bool/float, nonzero = real response token.
        kl_coef: β ≥ 0 (e.g. a KL controller's ``value``).
        position: ``"eos"``: the score goes to the last real token of each row. ``"last"``: to column
            ``T − 1`` of the buffer whatever the mask says (LLaVA-RLHF's ``_shape_reward``); that
            position is padding for shorter rows, so pair it with an all-ones mask in :func:`gae`
            (as LLaVA-RLHF does) or the score is ignored there.

    Returns:
        ``(B, T)`` float rewards (promoted dtype of ``kl`` and ``scores``), no gradient expected.

    Raises:
        ValueError: shapes disagree, unknown ``position``, or (``"eos"``) a row without real tokens.
    """
    if kl.dim() != 2 or kl.shape != mask.shape or scores.shape != kl.shape[:1]:
        raise ValueError(
            f"need scores (B,), kl and mask (B, T); got {tuple(scores.shape)}, {tuple(kl.shape)}, "
            f"{tuple(mask.shape)}"
        )
    m = mask.bool()
    dtype = torch.promote_types(kl.dtype, scores.dtype)
    rewards = torch.where(m, -kl_coef * kl.to(dtype), torch.zeros((), dtype=dtype, device=kl.device))
    rows = torch.arange(kl.shape[0], device=kl.device)
    if position == "eos":
        if not m.any(dim=1).all():
            raise ValueError("position='eos' needs at least one real token in every row")
        cols = torch.arange(kl.shape[1], device=kl.device)
        last = torch.where(m, cols, -1).amax(dim=1)
    elif position == "last":
        last = torch.full_like(rows, kl.shape[1] - 1)
    else:
        raise ValueError(f"unknown reward position {position!r}; expected 'eos' or 'last'")
    rewards[rows, last] += scores.to(dtype)
    return rewards


class KLController(Protocol):
    """What a PPO loop needs from a KL coefficient schedule."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """A constant KL coefficient β (``update`` does nothing)."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (the signature matches :class:`AdaptiveKLController`)."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. 2019 (section 2.2) proportional controller steering the KL towards a target.

    ``error = clip(current_kl / target − 1, −0.2, 0.2)``; ``value *= 1 + error · n_steps / horizon``.

    Args:
        init_coef: the starting β ≥ 0.
        target: the KL to aim for (nats per sequence or per token — the same unit as the
            ``current_kl`` given to ``update``), > 0.
        horizon: how many steps (``n_steps`` units; Ziegler et al. and TRL count samples) the
            controller takes to move β by a factor e^{±0.2}, > 0.

    Raises:
        ValueError: a negative ``init_coef`` or a non-positive ``target``/``horizon``.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_coef >= 0, target > 0, horizon > 0; got {init_coef}, {target}, {horizon}"
            )
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β after a batch whose measured KL was ``current_kl``, worth ``n_steps`` steps."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


def make_kl_controller(
    coef: float, target: float | None = None, horizon: float = 10000
) -> FixedKLController | AdaptiveKLController:
    """A fixed controller when ``target`` is None, else an adaptive one starting at ``coef``."""
    if target is None:
        return FixedKLController(coef)
    return AdaptiveKLController(coef, target, horizon)
