"""PPO with a reward model of another base: its own tokenizer, image size and hidden size.

LLaVA-RLHF's 7B recipe scores a 7B policy with a 13B reward model that has its own 336 px CLIP.
The reward model reads each response as text with its own processor, so nothing of the policy's
tokenisation or pixels reaches it; the value model (which scores the policy's tokens) starts from
a checkpoint of the policy's family. One process, ZeRO-0, one iteration.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.distributed import ROOT, dist_env


@pytest.mark.slow
def test_reward_model_with_other_tokenizer_and_image_size(tmp_path):
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from mmalign.models.heads import ScalarHead
    from mmalign.preference.reward_model import save_head
    from mmalign.shapeworld import WorldConfig, generate
    from mmalign.shapeworld.recipe.tiny_preset import shapeworld_texts

    data = tmp_path / "data"
    generate(data, n_images=8, n_videos=0, seed=9, cfg=WorldConfig(), progress=False)
    records = [r for r in json.loads((data / "llava" / "train.json").read_text()) if "image" in r][:4]
    prompts = [dict(r, captions=[r["conversations"][1]["value"]]) for r in records]
    (data / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    texts = shapeworld_texts(data)
    policy_tok, rm_tok = (
        train_bpe_tokenizer(texts, vocab_size=400),
        train_bpe_tokenizer(texts, vocab_size=330),
    )
    assert len(policy_tok) != len(rm_tok)
    policy = tiny_lmm(
        policy_tok, tiny_vision(image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4,
                                intermediate_size=64),
        llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96, seed=1,
    )  # fmt: skip
    rm = tiny_lmm(
        rm_tok, tiny_vision(image_size=40, patch_size=20, hidden_size=32, num_layers=1, num_heads=4,
                            intermediate_size=64),
        llm_hidden_size=64, llm_layers=2, llm_heads=4, llm_intermediate_size=128, seed=2,
    )  # fmt: skip
    save_lmm(policy, policy_tok, tmp_path / "policy")
    save_lmm(rm, rm_tok, tmp_path / "rm")
    head = ScalarHead(64, zero_init=False)
    with torch.no_grad():
        head.weight.normal_(std=0.5)
    save_head(head, tmp_path / "rm")
    out = tmp_path / "ppo"
    cfg = {
        "model": str(tmp_path / "policy"), "out": str(out), "prompts": str(data / "prompts.jsonl"),
        "media_root": str(data), "reward_model": str(tmp_path / "rm"), "value_model": str(tmp_path / "policy"),
        "reward_prompt": str(ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt"),
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "strategy": {"zero_stage": 0, "micro_batch_size": 2, "grad_accum": 1}, "iterations": 1,
        "rollout_batch_size": 4, "num_samples": 2, "max_new_tokens": 6, "log_every": 1, "plot": False,
    }  # fmt: skip
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "ppo.py"), "--config", str(path)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    scores = [x["reward/rm"] for x in samples]
    assert len(samples) == 8 and len(set(scores)) > 1, scores  # the other-base RM scored each text
    # value_head: reward would put a 64-wide head on the 48-wide value trunk: refused, named
    path.write_text(yaml.safe_dump({**cfg, "value_head": "reward", "out": str(tmp_path / "bad")}))
    bad = subprocess.run(
        [sys.executable, str(ROOT / "train" / "ppo.py"), "--config", str(path)],
        cwd=ROOT, env=dist_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "reads 64 features" in bad.stderr, bad.stderr[-2000:]
