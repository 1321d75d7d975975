"""GAE, whitening, rewards and KL controllers (mmalign/rl/advantages.py), checked by hand.

The 2-rank whitening test starts 2 real processes (torchrun, gloo) with tests/whiten_worker.py.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from mmalign.rl.advantages import (
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    gae,
    make_kl_controller,
    token_rewards,
    whiten,
)
from tests.distributed import ROOT, run, torchrun_cmd


def naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """GAE on one sequence of plain floats; the value after the last token is 0."""
    advantages, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        last = delta + gamma * lam * last
        advantages[t] = last
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (1.0, 0.95), (0.9, 0.8)])
def test_gae_matches_naive_loop(gamma, lam):
    rng = random.Random(1234)
    lengths, T = [7, 1, 4, 0, 5, 2], 7
    rows_r = [[rng.gauss(0, 1) for _ in range(n)] for n in lengths]
    rows_v = [[rng.gauss(0, 1) for _ in range(n)] for n in lengths]
    pad = 1e3  # garbage at padding must not leak into real tokens
    rewards = torch.tensor([r + [pad] * (T - len(r)) for r in rows_r], dtype=torch.float64)
    values = torch.tensor([v + [-pad] * (T - len(v)) for v in rows_v], dtype=torch.float64)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for i, n in enumerate(lengths):
        expected = naive_gae(rows_r[i], rows_v[i], gamma, lam)
        assert adv[i, :n].tolist() == pytest.approx(expected, abs=1e-12)
        assert ret[i, :n].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, rows_v[i], strict=True)], abs=1e-12
        )
        assert adv[i, n:].tolist() == [0.0] * (T - n) and ret[i, n:].tolist() == [0.0] * (T - n)


def test_gae_by_hand():
    # γ = λ = 1: A_t = (sum of rewards from t) − V_t
    adv, ret = gae(
        torch.tensor([[1.0, 2.0, 3.0, 9.0]]),
        torch.tensor([[0.5, 0.5, 0.5, 9.0]]),
        torch.tensor([[1, 1, 1, 0]]),
    )
    assert adv.tolist() == [pytest.approx([6 - 0.5, 5 - 0.5, 3 - 0.5, 0.0])]
    assert ret.tolist() == [pytest.approx([6.0, 5.0, 3.0, 0.0])]
    # γ = 0.9, λ = 0.8, r = (0, 1), V = (0.5, 0.2): δ1 = 1 − 0.2 = 0.8; δ0 = 0.9·0.2 − 0.5 = −0.32;
    # A1 = 0.8; A0 = −0.32 + 0.72·0.8 = 0.256
    adv, ret = gae(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.ones(1, 2), gamma=0.9, lam=0.8
    )
    assert adv.tolist() == [pytest.approx([0.256, 0.8])]
    assert ret.tolist() == [pytest.approx([0.756, 1.0])]
    assert not adv.requires_grad


def test_gae_mask_with_gap_treats_each_run_as_an_episode():
    r = [0.3, -1.0, 7.0, 0.5, 2.0]
    v = [0.1, 0.4, 7.0, -0.2, 0.6]
    adv, _ = gae(torch.tensor([r]), torch.tensor([v]), torch.tensor([[1, 1, 0, 1, 1]]), gamma=0.9, lam=0.8)
    expected = naive_gae(r[:2], v[:2], 0.9, 0.8) + [0.0] + naive_gae(r[3:], v[3:], 0.9, 0.8)
    assert adv[0].tolist() == pytest.approx(expected)


def test_token_rewards_both_positions_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    scores = torch.tensor([2.0, 3.0])
    eos = token_rewards(scores, kl, mask, kl_coef=0.5, position="eos")
    assert eos.tolist() == [pytest.approx([-0.05, -0.1, -0.15 + 2.0]), pytest.approx([-0.2 + 3.0, 0.0, 0.0])]
    last = token_rewards(scores, kl, mask, kl_coef=0.5, position="last")
    assert last.tolist() == [pytest.approx([-0.05, -0.1, -0.15 + 2.0]), pytest.approx([-0.2, 0.0, 3.0])]
    gap = token_rewards(scores[:1], kl[:1], torch.tensor([[1, 0, 1]]), kl_coef=1.0)  # last real token: col 2
    assert gap.tolist() == [pytest.approx([-0.1, 0.0, -0.3 + 2.0])]
    with pytest.raises(ValueError, match="every row"):
        token_rewards(scores, kl, torch.tensor([[1, 1, 1], [0, 0, 0]]), kl_coef=0.5)
    with pytest.raises(ValueError, match="position"):
        token_rewards(scores, kl, mask, kl_coef=0.5, position="first")


def test_adaptive_kl_controller_by_hand_and_resume():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error = clip(9/6 − 1 = 0.5) = 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl.update(current_kl=5.4, n_steps=256)  # error = 5.4/6 − 1 = −0.1
    assert ctl.value == pytest.approx(0.1 * 1.00512 * (1 - 0.1 * 256 / 10000))
    resumed = AdaptiveKLController(init_coef=1.0, target=1.0, horizon=1)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.state_dict() == ctl.state_dict()
    ctl.update(0.0, 100)  # error = clip(−1) = −0.2
    resumed.update(0.0, 100)
    assert resumed.value == ctl.value == pytest.approx(0.1 * 1.00512 * 0.99744 * (1 - 0.2 * 100 / 10000))


def test_fixed_controller_and_factory():
    ctl = make_kl_controller(0.05)
    assert isinstance(ctl, FixedKLController)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05 and ctl.state_dict() == {"value": 0.05}
    adaptive = make_kl_controller(0.05, target=6.0, horizon=500)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.horizon == 500.0
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_whiten_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 1e6, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # mean 2.5; unbiased variance ((1.5² + 0.5²)·2) / (4 − 1) = 5/3
    std = math.sqrt(5 / 3 + 1e-8)
    out = whiten(x, mask)
    assert out.dtype == torch.float32
    assert out.tolist() == [
        pytest.approx([-1.5 / std, -0.5 / std, 0.5 / std]),
        pytest.approx([1.5 / std, 0, 0]),
    ]
    kept = whiten(x, mask, shift_mean=False)
    assert kept.tolist() == [
        pytest.approx([2.5 - 1.5 / std, 2.5 - 0.5 / std, 2.5 + 0.5 / std]),
        pytest.approx([2.5 + 1.5 / std, 0, 0]),
    ]
    with pytest.raises(ValueError, match="at least 2"):
        whiten(x, torch.tensor([[0, 1, 0], [0, 0, 0]]))


@pytest.mark.multiproc
def test_whiten_equal_at_world_size_1_and_2(tmp_path):
    from tests.whiten_worker import whiten_batch

    run(torchrun_cmd(ROOT / "tests" / "whiten_worker.py", [str(tmp_path)]), timeout=60)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    x, mask = whiten_batch()
    for key, shift_mean in (("shifted", True), ("unshifted", False)):
        whole = whiten(x, mask, shift_mean=shift_mean)
        joined = torch.zeros_like(whole)
        joined[0:2, :] = r0[key]
        joined[2:5, :4] = r1[key]
        assert r0[key].shape == (2, 6) and r1[key].shape == (3, 4)
        torch.testing.assert_close(joined, whole, atol=1e-6, rtol=0)
        assert whole[mask].abs().max() > 0.5  # not trivially zero


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0, abs=1e-12)
    # V = (1, 2, 3, 5): R − V = (0, 0, 0, −1), population variance 0.25 − 0.0625 = 0.1875; Var[R] = 1.25
    values = torch.tensor([[1.0, 2.0, 3.0], [5.0, -7.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 0.1875 / 1.25)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))  # Var[R] = 0
    assert math.isnan(explained_variance(values, returns, torch.zeros_like(mask)))
