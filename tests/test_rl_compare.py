"""The RL comparison's cost reading and target verdicts (eval/rl_compare.py); the cost fields of a
real run are checked in test_ppo_multiproc.py."""

from __future__ import annotations

import json

import pytest
import yaml

from mmalign.eval.rl_compare import estimator_targets, format_costs, run_cost


def _run(tmp_path, name, estimator, judge, steps, k=1, batch=4):
    run = tmp_path / name
    run.mkdir()
    cfg = {"estimator": estimator, "rollout_batch_size": batch, "num_samples": k, "reward_model": None}
    cfg["reward_functions"] = [{"spec": "mmalign.rl.reward_fns:shapeworld_judge"}] if judge else []
    if not judge:
        cfg["reward_model"] = "runs/rlhf_rm_fact/final"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [json.dumps({"step": i + 1, **rec}) for i, rec in enumerate(steps)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _rec(tokens, length, peak, above, cpu, t):
    return {
        "rollout/generated_tokens": tokens, "response/length": length, "memory/peak_gib": peak,
        "memory/peak_above_start_gib": above, "cpu_s": cpu, "time": t,
    }  # fmt: skip


def test_run_cost_sums_tokens_and_counts_remax_greedy_responses(tmp_path):
    run = _run(
        tmp_path, "remax", "remax", True, [_rec(40, 5.0, 1.0, 0.4, 10, 3), _rec(60, 7.0, 1.2, 0.5, 22, 7)]
    )
    cost = run_cost(run)
    assert cost["estimator"] == "remax" and cost["reward"] == "judge"
    assert cost["responses"] == 2 * 4 * 2  # two iterations of 4 sampled + 4 greedy
    assert cost["generated_tokens"] == 100 and cost["response_length"] == 6.0
    assert (cost["peak_gib"], cost["peak_above_start_gib"], cost["cpu_s"], cost["wall_s"]) == (
        1.2,
        0.5,
        22,
        7,
    )
    grpo = run_cost(_run(tmp_path, "grpo", "grpo", False, [_rec(10, 1.0, 1, 0.1, 1, 1)], k=4))
    assert grpo["responses"] == 16 and grpo["reward"] == "rm"
    table = format_costs({"remax": cost, "grpo": grpo})
    assert "| responses generated (all ranks) | 16 | 16 |" in table


def test_run_cost_adds_up_cpu_and_wall_time_of_a_resumed_run(tmp_path):
    # killed after iteration 2, resumed from its checkpoint: cpu_s and time restart with the process
    recs = [_rec(1, 1, 1, 1, 10, 5), _rec(1, 1, 1, 1, 20, 9), _rec(1, 1, 1, 1, 8, 4), _rec(1, 1, 1, 1, 15, 6)]
    cost = run_cost(_run(tmp_path, "resumed", "ppo", True, recs))
    assert (cost["cpu_s"], cost["wall_s"]) == (35, 15)


def test_run_cost_refuses_a_log_without_costs_or_with_gaps(tmp_path):
    old = _run(tmp_path, "old", "ppo", True, [{"response/length": 3.0, "time": 1.0}])
    with pytest.raises(ValueError, match="memory/peak_gib"):
        run_cost(old)
    gaps = _run(tmp_path, "gaps", "ppo", True, [_rec(1, 1, 1, 1, 1, 1)] * 2)
    lines = (gaps / "metrics.jsonl").read_text().splitlines()
    (gaps / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1].replace('"step": 2', '"step": 5') + "\n")
    with pytest.raises(ValueError, match="one record per iteration"):
        run_cost(gaps)


def test_estimator_targets_by_hand():
    rows = {
        "sft": {"prior_yes": 0.9, "clear_qa": 0.95},
        "ppo_judge": {"prior_yes": 0.05, "clear_qa": 0.95},
        "remax_judge": {"prior_yes": 0.09, "clear_qa": 0.941},  # 90 % removed exactly; QA −0.9 pt
        "grpo_judge": {"prior_yes": 0.10, "clear_qa": 0.95},  # 88.9 % removed
        "remax_rm": {"prior_yes": 0.5, "clear_qa": 0.90},
    }
    cost = {"estimator": "ppo", "reward": "judge", "peak_above_start_gib": 1.0}
    costs = {
        "ppo_judge": cost,
        "remax_judge": {**cost, "estimator": "remax", "peak_above_start_gib": 0.6},
        "grpo_judge": {**cost, "estimator": "grpo"},
        "remax_rm": {**cost, "estimator": "remax", "reward": "rm", "peak_above_start_gib": 0.1},
    }
    remax = estimator_targets(rows, costs, "sft", "remax_judge")
    assert remax == {
        '≥ 90 % of the prior false "yes" removed': True,
        "clear QA drop ≤ 1 point": True,
        "matches ppo_judge": True,
        "peak memory ≤ 0.6× ppo_judge": True,
    }
    assert estimator_targets(rows, costs, "sft", "grpo_judge") == {
        '≥ 90 % of the prior false "yes" removed': False,
        "clear QA drop ≤ 1 point": True,
    }
    # no PPO run with the reward model here: nothing to match, and no verifiable-reward target
    assert estimator_targets(rows, costs, "sft", "remax_rm") == {}


def test_measurement_cache_key_changes_when_a_checkpoint_is_rewritten(tmp_path):
    """A checkpoint retrained into the same folder is measured anew, not read from the cache."""
    import os

    from mmalign.eval.bars import BarLimits
    from mmalign.eval.rlhf_study import cache_key

    ckpt = tmp_path / "final"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"a" * 8)
    limits = BarLimits(10, 0, 5, 4)
    before = json.loads(json.dumps(cache_key(ckpt, tmp_path, limits)))  # as stored and read back
    assert cache_key(ckpt, tmp_path, limits) == before
    (ckpt / "model.safetensors").write_bytes(b"b" * 8)
    os.utime(ckpt / "model.safetensors", ns=(1, 1))  # same size, another time
    assert cache_key(ckpt, tmp_path, limits) != before
    assert cache_key(ckpt, tmp_path, BarLimits(10, 0, 6, 4)) != cache_key(ckpt, tmp_path, limits)
