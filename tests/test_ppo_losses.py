"""PPO losses (mmalign/losses/ppo.py): every expected value is computed by hand in the test."""

from __future__ import annotations

import math

import pytest
import torch

from mmalign.losses.ppo import (
    entropy_from_logits,
    kl_penalty,
    masked_mean,
    masked_sum,
    policy_loss,
    value_loss,
)

NAN = float("nan")


def test_masked_sum_and_mean():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, NAN], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert masked_sum(x, mask).item() == pytest.approx(1 + 2 + 4)
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)  # the nan at padding does not leak
    assert masked_sum(x, mask.bool(), dim=-1).tolist() == pytest.approx([3.0, 4.0, 0.0])
    assert masked_mean(x, mask.float(), dim=-1).tolist() == pytest.approx([1.5, 4.0, 0.0])  # empty row: 0
    assert masked_mean(x, mask, dim=0).tolist() == pytest.approx([2.5, 2.0, 0.0])
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


# One batch for the policy loss: ratio r and advantage A per token (ε = 0.2).
#   row 0: (r=1.5, A=+1) → max(−1.5, −1.2) = −1.2 clipped;   (r=0.5, A=+1) → max(−0.5, −0.8) = −0.5;
#          (r=0.5, A=−1) → max(0.5, 0.8) = 0.8 clipped
#   row 1: (r=1.5, A=−1) → max(1.5, 1.2) = 1.5;   (r=1.0, A=+2) → −2 (tie, not clipped);   padding
#   row 2: all padding (a response with no tokens)
# Padding holds a huge ratio, a nan and a large advantage that must not leak (nor into gradients).
RATIOS = [[1.5, 0.5, 0.5], [1.5, 1.0, math.exp(10.0)], [NAN, 3.0, 3.0]]
ADV = [[1.0, 1.0, -1.0], [-1.0, 2.0, 50.0], [7.0, 7.0, 7.0]]
MASK = [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
TOKEN_LOSSES = [-1.2, -0.5, 0.8, 1.5, -2.0]


def _policy_batch(requires_grad: bool = False):
    old = torch.full((3, 3), -1.3, dtype=torch.float64)
    logprobs = (old + torch.tensor(RATIOS, dtype=torch.float64).log()).requires_grad_(requires_grad)
    return logprobs, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("token_mean", sum(TOKEN_LOSSES) / 5),  # −1.4 / 5 real tokens
        ("sequence_mean", ((-1.2 - 0.5 + 0.8) / 3 + (1.5 - 2.0) / 2) / 2),  # the empty row is skipped
        ("all_positions", sum(TOKEN_LOSSES) / 9),  # LLaVA-RLHF: divided by the B·T = 9 buffer positions
    ],
)
def test_policy_loss_aggregations_by_hand(aggregation, expected):
    loss, _ = policy_loss(*_policy_batch(), clip_range=0.2, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_policy_loss_stats_by_hand():
    _, stats = policy_loss(*_policy_batch(), clip_range=0.2)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)  # (0,0) and (0,2); the tie is not active
    expected_kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + 0.0) / 5
    assert stats["approx_kl"].item() == pytest.approx(expected_kl)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.0) / 5)
    assert stats["ratio_max"].item() == pytest.approx(1.5)  # not the padding's e^10
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())


def test_policy_gradient_zero_where_clipped_and_inactive():
    logprobs, old, adv, mask = _policy_batch(requires_grad=True)
    loss, _ = policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    loss.backward()
    # d/dlogprob of −A·r is −A·r (dr/dlogprob = r); the token mean divides by 5.
    expected = [[0.0, -1.0 * 0.5 / 5, 0.0], [1.0 * 1.5 / 5, -2.0 * 1.0 / 5, 0.0], [0.0, 0.0, 0.0]]
    assert logprobs.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def test_policy_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="aggregation"):
        policy_loss(*_policy_batch(), aggregation="sum")
    with pytest.raises(ValueError, match="clip_range"):
        policy_loss(*_policy_batch(), clip_range=0.0)


# Value loss, ε = 0.2; per token: v_clip = old + clamp(v − old, ±0.2)
#   a: old 0,  v 0.5,  R 1    → (0.5−1)² = 0.25, (0.2−1)² = 0.64   → 0.64 clipped
#   b: old 0,  v 0.5,  R 0    → 0.25, (0.2)² = 0.04                 → 0.25
#   c: old 1,  v 0.9,  R 0.9  → 0, 0                                → 0
#   d: old 0,  v −1,   R −2   → 1, (−0.2+2)² = 3.24                 → 3.24 clipped
# rows: [a, b, c] and [d, pad, pad]
def _value_batch():
    values = torch.tensor([[0.5, 0.5, 0.9], [-1.0, 9.0, NAN]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 1.0], [0.0, -9.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 0.0, 0.9], [-2.0, 30.0, 0.0]], dtype=torch.float64)
    return values, old, returns, torch.tensor([[True, True, True], [True, False, False]])


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("token_mean", 0.5 * (0.64 + 0.25 + 0.0 + 3.24) / 4),
        ("sequence_mean", 0.5 * ((0.64 + 0.25 + 0.0) / 3 + 3.24) / 2),
        ("all_positions", 0.5 * (0.64 + 0.25 + 0.0 + 3.24) / 6),
    ],
)
def test_value_loss_clipped_by_hand(aggregation, expected):
    loss, stats = value_loss(*_value_batch(), clip_range=0.2, aggregation=aggregation)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["value_clip_fraction"].item() == pytest.approx(2 / 4)
    assert stats["value_error"].item() == pytest.approx((0.25 + 0.25 + 0.0 + 1.0) / 4)


def test_value_loss_unclipped_and_gradient():
    values, old, returns, mask = _value_batch()
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.25 + 0.0 + 1.0) / 4)
    assert stats["value_clip_fraction"].item() == 0.0
    loss.backward()
    # d/dv of 0.5·(v − R)²/4 is (v − R)/4; padding gets 0 (also where it holds nan)
    assert values.grad.tolist() == [
        pytest.approx([-0.5 / 4, 0.5 / 4, 0.0]),
        [pytest.approx(1.0 / 4), 0.0, 0.0],
    ]
    values.grad = None
    loss, _ = value_loss(values, old, returns, mask, clip_range=0.2)
    loss.backward()
    # clipped tokens a and d: the max picks the clipped error, constant in v → gradient 0
    assert values.grad.tolist() == [pytest.approx([0.0, 0.5 / 4, 0.0]), [0.0, 0.0, 0.0]]


# p (policy) and q (reference) over 3 outcomes; KL(p‖q) = Σ p·log(p/q) written out by hand.
P = [0.5, 0.3, 0.2]
Q = [0.2, 0.5, 0.3]
KL_PQ = 0.5 * math.log(0.5 / 0.2) + 0.3 * math.log(0.3 / 0.5) + 0.2 * math.log(0.2 / 0.3)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_unbiased_kl_estimators_match_exact_kl(estimator):
    lp = torch.tensor(P, dtype=torch.float64).log()
    ref = torch.tensor(Q, dtype=torch.float64).log()
    per_outcome = kl_penalty(lp, ref, estimator=estimator)
    expectation = sum(
        p * k for p, k in zip(P, per_outcome.tolist(), strict=True)
    )  # exact E_{x~p}, no sampling
    assert KL_PQ == pytest.approx(0.2238, abs=1e-4)  # the hand formula, evaluated
    assert expectation == pytest.approx(KL_PQ, abs=1e-12)


def test_kl_estimators_by_hand():
    lp = torch.tensor([math.log(0.5), math.log(0.25)], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), math.log(0.5)], dtype=torch.float64)
    ln2 = math.log(2.0)
    assert kl_penalty(lp, ref, "k1").tolist() == pytest.approx([ln2, -ln2])
    assert kl_penalty(lp, ref, "k2").tolist() == pytest.approx([0.5 * ln2**2, 0.5 * ln2**2])
    assert kl_penalty(lp, ref, "mse").tolist() == pytest.approx([0.5 * ln2**2, 0.5 * ln2**2])
    # k3 = exp(ref − lp) − (ref − lp) − 1: ref − lp = −ln2 → 0.5 + ln2 − 1; = +ln2 → 2 − ln2 − 1
    assert kl_penalty(lp, ref, "k3").tolist() == pytest.approx([ln2 - 0.5, 1.0 - ln2])
    assert kl_penalty(lp, ref, "abs").tolist() == pytest.approx([ln2, ln2])
    assert kl_penalty(lp, ref, "k1", clamp_min=0.0).tolist() == pytest.approx([ln2, 0.0])  # LLaVA-RLHF
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(lp, ref, "k4")


def test_k3_nonnegative_and_all_zero_at_reference():
    torch.manual_seed(0)
    lp, ref = torch.randn(4, 50) * 3, torch.randn(4, 50) * 3
    assert (kl_penalty(lp, ref, "k3") >= 0).all()
    for estimator in ("k1", "k2", "mse", "k3", "abs"):
        assert torch.equal(kl_penalty(lp, lp.clone(), estimator), torch.zeros_like(lp))


def test_entropy_from_logits_by_hand():
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: ln 4
            [0.0, math.log(3.0), float("-inf"), float("-inf")],  # p = (1/4, 3/4)
            [1000.0, 1000.0, -1000.0, float("-inf")],  # large logits: ln 2, no overflow
        ],
        dtype=torch.bfloat16,
    )
    h = entropy_from_logits(logits)
    assert h.dtype == torch.float32 and h.shape == (3,)
    p1 = torch.tensor(math.log(3.0), dtype=torch.bfloat16).float().exp().item()  # 3, as bf16 rounds it
    q = [1 / (1 + p1), p1 / (1 + p1)]
    assert h.tolist() == pytest.approx(
        [math.log(4), -(q[0] * math.log(q[0]) + q[1] * math.log(q[1])), math.log(2)]
    )
    assert entropy_from_logits(torch.zeros(2, 3, 5)).shape == (2, 3)


# The GRPO family's aggregations on the same batch (TOKEN_LOSSES; row 2 has no real token).
@pytest.mark.parametrize(
    ("aggregation", "kwargs", "expected"),
    [
        # per-sequence mean, then the mean over all B = 3 sequences (the empty one counts as 0, as in TRL)
        ("grpo", {}, ((-1.2 - 0.5 + 0.8) / 3 + (1.5 - 2.0) / 2 + 0.0) / 3),
        ("dapo", {}, sum(TOKEN_LOSSES) / 5),  # token mean over the batch
        ("dapo", {"num_tokens": 7}, sum(TOKEN_LOSSES) / 7),  # e.g. the whole optimiser batch's tokens
        ("dr_grpo", {"max_tokens": 4}, sum(TOKEN_LOSSES) / (3 * 4)),  # B · max_tokens, not B · T
    ],
)
def test_policy_loss_grpo_family_aggregations_by_hand(aggregation, kwargs, expected):
    loss, _ = policy_loss(*_policy_batch(), clip_range=0.2, aggregation=aggregation, **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_grpo_family_aggregations_reject_missing_constants():
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(*_policy_batch(), aggregation="dr_grpo")
    with pytest.raises(ValueError, match="max_tokens"):
        policy_loss(*_policy_batch(), aggregation="dr_grpo", max_tokens=0)
    with pytest.raises(ValueError, match="num_tokens"):
        policy_loss(*_policy_batch(), aggregation="dapo", num_tokens=0)


def test_policy_loss_without_clipping_is_reinforce_with_ratio():
    logprobs, old, adv, mask = _policy_batch(requires_grad=True)
    loss, stats = policy_loss(logprobs, old, adv, mask, clip_range=None)
    # −A·r per token: row 0: −1.5, −0.5, +0.5; row 1: +1.5, −2.0 → sum −2.0 over 5 tokens
    assert loss.item() == pytest.approx(-2.0 / 5, abs=1e-12)
    assert stats["clip_fraction"].item() == 0.0
    loss.backward()
    # d/dlogprob of −A·r is −A·r at every real token: no token loses its gradient
    expected = [[-1.5 / 5, -0.5 / 5, 0.5 / 5], [1.5 / 5, -2.0 / 5, 0.0], [0.0, 0.0, 0.0]]
    assert logprobs.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]
    logprobs.grad = None
    loss, _ = policy_loss(logprobs, old, adv, mask, clip_range=None, aggregation="dr_grpo", max_tokens=4)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0 / 12, abs=1e-12)
    expected = [[-1.5 / 12, -0.5 / 12, 0.5 / 12], [1.5 / 12, -2.0 / 12, 0.0], [0.0, 0.0, 0.0]]
    assert logprobs.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in expected]


def test_policy_loss_clip_higher_by_hand():
    # ε = 0.2 below, ε_high = 0.6 above: (r=1.5, A=+1) is inside [0.8, 1.6] now → −1.5 (not clipped);
    # (0.5, +1) → −0.5; (0.5, −1) → max(0.5, 0.8) = 0.8 clipped below; (1.5, −1) → 1.5; (1, +2) → −2
    loss, stats = policy_loss(*_policy_batch(), clip_range=0.2, clip_range_high=0.6)
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 0.8 + 1.5 - 2.0) / 5, abs=1e-12)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="clip_range_high"):
        policy_loss(*_policy_batch(), clip_range=None, clip_range_high=0.3)
    with pytest.raises(ValueError, match="clip_range_high"):
        policy_loss(*_policy_batch(), clip_range_high=0.0)


def test_dapo_denominators_make_the_step_loss_independent_of_the_micro_batch_split():
    """DAPO normalises by the tokens of the whole optimizer step (TRL); a per-micro-batch token
    mean weighs a short micro-batch's tokens more (found comparing with TRL's GRPOTrainer)."""
    from mmalign.losses.ppo import aggregate
    from mmalign.rl.ppo import dapo_denominators

    x = torch.tensor([[1.0, 1, 1, 1], [3.0, 0, 0, 0]])
    m = torch.tensor([[1.0, 1, 1, 1], [1.0, 0, 0, 0]])
    whole = aggregate(x, m, "dapo")
    assert float(whole) == pytest.approx(7 / 5)
    naive = (aggregate(x[:1], m[:1], "dapo") + aggregate(x[1:], m[1:], "dapo")) / 2
    assert float(naive) == pytest.approx(2.0)  # what the update optimised before
    # two micro-batches accumulated into one step on one rank: the engine averages their losses
    den = dapo_denominators([4.0, 1.0], grad_accum=2, world_size=1)
    assert den == [2.5, 2.5]
    split = (
        aggregate(x[:1], m[:1], "dapo", num_tokens=den[0])
        + aggregate(x[1:], m[1:], "dapo", num_tokens=den[1])
    ) / 2
    assert float(split) == pytest.approx(float(whole))
    # two ranks, one micro-batch each: the rank mean of the losses is the global token mean
    totals = iter([5.0, 5.0])  # what the all-reduce returns on each rank
    den0 = dapo_denominators([4.0], 1, 2, lambda v: next(totals))
    den1 = dapo_denominators([1.0], 1, 2, lambda v: next(totals))
    ranks = (
        aggregate(x[:1], m[:1], "dapo", num_tokens=den0[0])
        + aggregate(x[1:], m[1:], "dapo", num_tokens=den1[0])
    ) / 2
    assert float(ranks) == pytest.approx(float(whole))
    # each optimizer step is normalised on its own; a step without tokens divides by 1
    assert dapo_denominators([4.0, 1.0, 0.0, 0.0], grad_accum=2, world_size=1) == [2.5, 2.5, 1.0, 1.0]
