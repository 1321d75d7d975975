"""ReMax, RLOO and GRPO advantages (mmalign/rl/baselines.py), every expected value by hand.

The 2-rank test of ``scale="batch"`` runs this file itself as the worker (``python -m
torch.distributed.run tests/test_baselines.py OUT``, gloo): rank 0 holds group 0, rank 1 groups 1–2.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from mmalign.rl.baselines import (
    broadcast_to_tokens,
    equal_reward_share,
    grpo_advantages,
    remax_advantages,
    rloo_advantages,
)

NAN = float("nan")
# Two prompts × K = 3: group 0 has mean 3 (centred −2, −1, 3); group 1 is all equal (no signal).
REWARDS = [[1.0, 2.0, 6.0], [3.0, 3.0, 3.0]]


def test_remax_is_sample_minus_greedy_and_exactly_zero_when_equal():
    sample = torch.tensor([1.0, 0.5, -2.0, 0.1])
    greedy = torch.tensor([1.0, 1.5, -3.0, 0.1])
    adv = remax_advantages(sample, greedy)
    assert adv.tolist() == pytest.approx([0.0, -1.0, 1.0, 0.0])
    assert adv[0].item() == 0.0 and adv[3].item() == 0.0  # exactly, not approximately
    assert adv.dtype == torch.float32
    assert remax_advantages(torch.tensor([1, 0]), torch.tensor([0, 0])).tolist() == [1.0, 0.0]  # ints → float
    with pytest.raises(ValueError, match=r"\(G,\)"):
        remax_advantages(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(G,\)"):
        remax_advantages(torch.zeros(2, 1), torch.zeros(2, 1))


def test_rloo_leave_one_out_by_hand():
    adv = rloo_advantages(torch.tensor(REWARDS))
    # group 0: 1 − (2 + 6)/2 = −3;  2 − (1 + 6)/2 = −1.5;  6 − (1 + 2)/2 = 4.5
    assert adv.tolist() == [pytest.approx([-3.0, -1.5, 4.5]), [0.0, 0.0, 0.0]]
    assert adv.shape == (2, 3) and adv.dtype == torch.float32
    # K = 2: each response is baselined by the other one
    assert rloo_advantages(torch.tensor([[1.0, 4.0]])).tolist() == [pytest.approx([-3.0, 3.0])]
    with pytest.raises(ValueError, match="K >= 2"):
        rloo_advantages(torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"\(G, K\)"):
        rloo_advantages(torch.ones(6))


def test_equal_groups_give_exact_zeros_where_the_naive_formula_leaves_a_residue():
    r = torch.tensor([[0.1, 0.1, 0.1]], dtype=torch.float64)
    naive = r - (r.sum(dim=1, keepdim=True) - r) / 2
    assert naive.abs().max().item() > 0  # 0.1 − (0.30000000000000004 − 0.1)/2 ≠ 0
    assert rloo_advantages(r).tolist() == [[0.0, 0.0, 0.0]]
    for scale in ("group", "batch", "none"):
        assert grpo_advantages(r, scale=scale).tolist() == [[0.0, 0.0, 0.0]]


def test_grpo_group_scale_by_hand():
    adv = grpo_advantages(torch.tensor(REWARDS), scale="group")
    std = math.sqrt((4 + 1 + 9) / 2)  # unbiased: divisor K − 1 = 2
    assert adv.tolist() == [pytest.approx([c / (std + 1e-4) for c in (-2, -1, 3)]), [0.0, 0.0, 0.0]]
    # K = 2: std of (0, 1) is sqrt(0.5); eps enters as std + eps
    adv = grpo_advantages(torch.tensor([[0.0, 1.0]], dtype=torch.float64), eps=0.5)
    assert adv.tolist() == [pytest.approx([-0.5 / (math.sqrt(0.5) + 0.5), 0.5 / (math.sqrt(0.5) + 0.5)])]


def test_grpo_batch_scale_by_hand():
    adv = grpo_advantages(torch.tensor(REWARDS), scale="batch")
    # all six rewards: mean 18/6 = 3, squared deviations 4 + 1 + 9 + 0 + 0 + 0 = 14, var 14/5
    std = math.sqrt(14 / 5)
    assert adv.tolist() == [pytest.approx([c / (std + 1e-4) for c in (-2, -1, 3)]), [0.0, 0.0, 0.0]]


def test_grpo_none_scale_is_dr_grpo_centring():
    adv = grpo_advantages(torch.tensor(REWARDS), scale="none")
    assert adv.tolist() == [[-2.0, -1.0, 3.0], [0.0, 0.0, 0.0]]


def test_grpo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="K >= 2"):
        grpo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(torch.ones(3, 2), scale="global")
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(torch.ones(3, 2), eps=-1.0)


def test_flat_rollout_order_is_prompt_major():
    # the rollout's flat (S,) rewards, s = g·K + k, view as (G, K) and back
    flat = torch.tensor([1.0, 2.0, 6.0, 3.0, 3.0, 3.0])
    adv = rloo_advantages(flat.view(2, 3)).reshape(-1)
    assert adv.tolist() == pytest.approx([-3.0, -1.5, 4.5, 0.0, 0.0, 0.0])


def test_equal_reward_share_by_hand():
    rewards = torch.tensor([[1.0, 1.0], [1.0, 2.0], [NAN, NAN], [0.0, 0.0]])
    assert equal_reward_share(rewards) == 0.5  # groups 0 and 3; NaN never equals
    assert equal_reward_share(torch.tensor(REWARDS)) == 0.5
    assert equal_reward_share(torch.tensor([[5.0]])) == 1.0  # a group of one is trivially equal
    with pytest.raises(ValueError, match="non-empty"):
        equal_reward_share(torch.zeros(0, 3))


def test_broadcast_to_tokens_by_hand():
    seq_adv = torch.tensor([1.5, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    out = broadcast_to_tokens(seq_adv, mask)
    assert out.tolist() == [[1.5, 1.5, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert broadcast_to_tokens(seq_adv.double(), mask.bool()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(S, T\)"):
        broadcast_to_tokens(seq_adv, mask[:2])


# ---------------------------------------------------------------------------- 2 ranks, gloo

RANK_GROUPS = {0: [[1.0, 2.0, 6.0]], 1: [[3.0, 3.0, 3.0], [0.0, 4.0, 8.0]]}


@pytest.mark.multiproc
def test_grpo_batch_scale_over_two_ranks_equals_one_process(tmp_path):
    from tests.distributed import ROOT, run, torchrun_cmd

    run(torchrun_cmd(ROOT / "tests" / "test_baselines.py", [str(tmp_path)]), timeout=60)
    joined = torch.cat([torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")])
    whole = grpo_advantages(torch.tensor(RANK_GROUPS[0] + RANK_GROUPS[1]), scale="batch")
    torch.testing.assert_close(joined, whole, atol=1e-6, rtol=0)
    # by hand: nine rewards, mean 30/9, Σ(r − mean)² = Σr² − 30²/9 = 148 − 100 = 48, var 48/8 = 6
    std = math.sqrt(6.0)
    assert joined[2].tolist() == pytest.approx([-4 / (std + 1e-4), 0.0, 4 / (std + 1e-4)])
    assert joined[1].tolist() == [0.0, 0.0, 0.0]


def _worker(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.save(grpo_advantages(torch.tensor(RANK_GROUPS[rank]), scale="batch"), out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
