"""PPO and the critic-free estimators learn: a simple exact reward rises while the KL to the
reference stays bounded.

The shipped tiny ShapeWorld model, sampling at temperature 1, answers "yes" to ~70 % of "Is there a
<partner>?" (greedy: ~90 %) on scenes that show the co-occurrence trigger without the partner (its
learnt prior). The reward here is exact
and simple. PPO: the reward model scores 0 (a zero head), and LLaVA-RLHF's correctness term gives
+0.5 for "no" and −0.5 for "yes" on items whose truth is "no" (the ``reference`` yes/no parser, as
the tiny model answers in lower case). ReMax, RLOO, GRPO: no reward model; the built-in exact
ShapeWorld judge as a verifiable reward function (1 for the right yes/no, 0 otherwise). From the
SFT model each must raise its reward within a few iterations while the per-sequence KL stays
small. One process, ZeRO-0 (the 2-rank ZeRO-3 path is tests/test_ppo_multiproc.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.distributed import ROOT, dist_env

SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"


JUDGE = [{"spec": "mmalign.rl.reward_fns:shapeworld_judge", "name": "judge"}]
ESTIMATORS = {
    "ppo": (
        {"shaping": {"correctness_coef": 1.0, "yes_no_rule": "reference"}, "num_samples": 2},
        "correctness",
    ),
    "remax": ({"preset": "remax", "reward_model": None, "reward_functions": JUDGE}, "fn/judge"),
    "rloo": (
        {"preset": "rloo", "reward_model": None, "reward_functions": JUDGE, "num_samples": 4},
        "fn/judge",
    ),
    "grpo": (
        {"preset": "grpo", "reward_model": None, "reward_functions": JUDGE, "num_samples": 4},
        "fn/judge",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_exact_reward_rises_while_kl_stays_bounded(tmp_path, estimator):
    from mmalign.models.heads import ScalarHead
    from mmalign.preference.reward_model import save_head
    from mmalign.shapeworld import WorldConfig, generate

    world = WorldConfig.from_dict(json.loads((ROOT / "configs/shapeworld/world.json").read_text()))
    data = tmp_path / "data"
    generate(data, 8, 0, seed=77, cfg=world, val_frac=0.0, test_frac=0.5, prior_per_group=48, progress=False)
    probes = [json.loads(x) for x in (data / "prior" / "test.jsonl").read_text().splitlines()]
    prompts = [
        {
            "id": p["scene_id"],
            "image": p["image"],
            "conversations": [{"from": "human", "value": "<image>\n" + p["question"]}],
            "answer": "no",
            "task": "existence",
        }
        for p in probes
        if p["group"] == "violating"
    ]
    (data / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    rm = tmp_path / "rm"
    shutil.copytree(SHIPPED, rm)
    save_head(ScalarHead(192), rm)  # zero head: the reward model scores 0
    out = tmp_path / "ppo"
    cfg = {
        "model": str(SHIPPED),
        "out": str(out),
        "prompts": str(data / "prompts.jsonl"),
        "media_root": str(data),
        "reward_model": str(rm),
        "reward_prompt": None,
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "optim": {"lr": 5.0e-5, "schedule": "constant", "weight_decay": 0.0},
        "value_lr": 1.0e-3,
        "strategy": {"zero_stage": 0, "precision": "fp32", "micro_batch_size": 8, "grad_accum": 1},
        "iterations": 10,
        "rollout_batch_size": 16,
        "ppo_epochs": 2,
        "max_new_tokens": 4,
        "kl_coef": 0.05,
        "log_every": 1,
        "plot": False,
    }
    settings, term = ESTIMATORS[estimator]
    cfg.update(settings)
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "ppo.py"), "--config", str(path)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    reward = [r[f"reward/{term}"] for r in recs]
    kl = [r["kl/sequence"] for r in recs]
    first = 0.0 if term == "correctness" else 0.5  # correctness: ±0.5; the judge: 1 or 0
    assert reward[0] < first, f"the SFT model should say 'yes' to the absent partner: {reward}"
    assert sum(reward[-3:]) / 3 > reward[0] + 0.4, f"the exact reward did not rise: {reward}"
    assert max(kl) < 3.0, f"KL to the reference ran away: {kl}"
    assert abs(recs[0]["kl/sequence"]) < 1e-4 and recs[0]["policy/ratio_first"] < 1e-4


FLAKY_FN = """
def flaky(records, responses):
    return [float("nan") if r["id"].endswith(("1", "3")) else 1.0 for r in records]
"""


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["ppo", "grpo"])
def test_failing_reward_function_is_skipped_or_named(tmp_path, estimator):
    """A reward function returning NaN for some records: ``skip`` counts them and trains on the rest
    (a PPO row left without tokens once crashed one rank); ``error`` names the record."""
    from mmalign.shapeworld import WorldConfig, generate

    world = WorldConfig.from_dict(json.loads((ROOT / "configs/shapeworld/world.json").read_text()))
    data = tmp_path / "data"
    generate(data, 8, 0, seed=78, cfg=world, val_frac=0.0, test_frac=0.5, prior_per_group=8, progress=False)
    probes = [json.loads(x) for x in (data / "prior" / "test.jsonl").read_text().splitlines()]
    prompts = [
        {"id": p["scene_id"], "image": p["image"], "answer": "no", "task": "existence",
         "conversations": [{"from": "human", "value": "<image>\n" + p["question"]}]}
        for p in probes if p["group"] == "violating"
    ]  # fmt: skip
    (data / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (tmp_path / "flaky.py").write_text(FLAKY_FN)
    cfg = {
        "model": str(SHIPPED), "prompts": str(data / "prompts.jsonl"), "media_root": str(data),
        "reward_model": None, "reward_functions": [{"spec": f"{tmp_path / 'flaky.py'}:flaky"}],
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "strategy": {"zero_stage": 0, "micro_batch_size": 4, "grad_accum": 1}, "iterations": 2,
        "rollout_batch_size": 8, "num_samples": 2, "max_new_tokens": 4, "log_every": 1, "plot": False,
        "estimator": estimator, "kl_mode": "loss" if estimator == "grpo" else "reward",
    }  # fmt: skip
    for mode in ("skip", "error"):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / mode), "reward_fn_errors": mode}))
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train" / "ppo.py"), "--config", str(path)],
            cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if mode == "skip":
            assert proc.returncode == 0, proc.stderr[-3000:]
            recs = [json.loads(x) for x in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
            assert all(r["reward/skipped"] > 0 for r in recs) and len(recs) == 2
        else:
            assert proc.returncode != 0 and "flaky" in proc.stderr and "prior_" in proc.stderr, proc.stderr[
                -3000:
            ]
