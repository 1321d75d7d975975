"""PPO learns: a simple exact reward rises while the KL to the reference stays bounded.

The shipped tiny ShapeWorld model, sampling at temperature 1, answers "yes" to ~70 % of "Is there a
<partner>?" (greedy: ~90 %) on scenes that show the co-occurrence trigger without the partner (its
learnt prior). The reward here is exact
and simple: the reward model scores 0 (a zero head), and LLaVA-RLHF's correctness term gives +0.5
for "no" and −0.5 for "yes" on items whose truth is "no" (the ``reference`` yes/no parser, as the
tiny model answers in lower case). PPO from the SFT model must raise it within a few iterations
while the per-sequence KL stays small. One process, ZeRO-0 (the 2-rank ZeRO-3 path is
tests/test_ppo_multiproc.py).
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


@pytest.mark.slow
def test_exact_reward_rises_while_kl_stays_bounded(tmp_path):
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
        "num_samples": 2,
        "ppo_epochs": 2,
        "max_new_tokens": 4,
        "shaping": {"correctness_coef": 1.0, "yes_no_rule": "reference"},
        "kl_coef": 0.05,
        "log_every": 1,
        "plot": False,
    }
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "ppo.py"), "--config", str(path)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    reward = [r["reward/correctness"] for r in recs]
    kl = [r["kl/sequence"] for r in recs]
    assert reward[0] < 0.0, f"the SFT model should say 'yes' to the absent partner: {reward}"
    assert sum(reward[-3:]) / 3 > reward[0] + 0.4, f"the exact reward did not rise: {reward}"
    assert max(kl) < 3.0, f"KL to the reference ran away: {kl}"
    assert abs(recs[0]["kl/sequence"]) < 1e-4 and recs[0]["policy/ratio_first"] < 1e-4
