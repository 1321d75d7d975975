"""train/dpo.py and train/reward.py under DeepSpeed ZeRO-3 with 2 real ranks (gloo, CPU).

Marked ``multiproc``. Checks: training runs and exports; every trainable tensor changed; a run
stopped at step 2 and resumed equals an uninterrupted run; LoRA + adapter-disabled reference with
POVID's noise term runs; the reward model trains and its saved head reloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmalign.models.checkpoint import load_lmm
from tests.distributed import ROOT, run, torchrun_cmd

pytestmark = pytest.mark.multiproc
ZERO3 = {
    "zero_stage": 3,
    "micro_batch_size": 2,
    "grad_accum": 1,
    "stage3_max_live_parameters": 1000,
    "stage3_max_reuse_distance": 0,
    "stage3_param_persistence_threshold": 0,
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """ShapeWorld pairs (POVID format) and a tiny base checkpoint."""
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from mmalign.preference.shapeworld_pairs import build_pairs
    from mmalign.shapeworld import WorldConfig, generate
    from mmalign.shapeworld.recipe.tiny_preset import shapeworld_texts

    root = tmp_path_factory.mktemp("pref")
    data = root / "data"
    generate(data, n_images=16, n_videos=0, seed=3, cfg=WorldConfig(), progress=False)
    records = build_pairs(data, "train")[:24]
    for r in records:  # captions for the reward model's factual augmentation
        r["captions"] = [r["conversations"][1]["value"]] if r["task"] != "existence" else ["no caption"]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = train_bpe_tokenizer(shapeworld_texts(data), vocab_size=400)
    vision = tiny_vision(
        image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(
        tok, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96, seed=1
    )
    save_lmm(model, tok, root / "base")
    return root


def config(base: Path, out: Path, **over) -> Path:
    fields = {
        "model": str(base / "base"),
        "out": str(out),
        "data": [{"path": str(base / "data" / "pairs.jsonl"), "media_root": str(base / "data")}],
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "optim": {"lr": 1.0e-3, "schedule": "constant"},
        "strategy": dict(ZERO3),
        "max_steps": 4,
        "max_length": 160,
        "log_every": 1,
        "seed": 0,
    }
    fields.update(over)
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def llm_state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_lmm(path)
    return {k: v for k, v in model.state_dict().items() if k.startswith("llm.")}


@pytest.fixture(scope="module")
def full_run(base) -> Path:
    """4 ZeRO-3 steps, precomputed reference, DPO + SFT term."""
    full = base / "full"
    run(
        torchrun_cmd(ROOT / "train" / "dpo.py", ["--config", str(config(base, full, sft_weight=0.5))]),
        timeout=240,
    )
    return full


def test_dpo_zero3_trains_and_exports(base, full_run):
    full = full_run
    recs = metrics(full)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    # step 1: policy == reference, so the DPO loss is log 2 and the rewards are 0
    first = recs[0]
    assert abs(first["loss"] - 0.5 * first["sft_nll"] - 0.693147) < 1e-4
    assert abs(first["rewards/margin"]) < 1e-5
    assert all(abs(r["rewards/chosen"]) > 1e-4 for r in recs[1:])  # the policy moved away from the reference
    assert len(list((full / "ref_cache").glob("*.jsonl"))) == 2  # one shard per rank
    start, end = llm_state(base / "base"), llm_state(full / "final")
    assert all(not torch.equal(start[k], end[k]) for k in start if "embed_tokens" not in k)


def test_dpo_resume_equals_uninterrupted(base, full_run, tmp_path):
    """2 steps, then resume to 4: same weights as the uninterrupted run; the cache is reused."""
    full = full_run
    end = llm_state(full / "final")
    part = tmp_path / "part"
    cache = str(full / "ref_cache")
    run(
        torchrun_cmd(
            ROOT / "train" / "dpo.py",
            ["--config", str(config(base, part, sft_weight=0.5, max_steps=2, ref_cache=cache))],
        )
    )
    proc = run(
        torchrun_cmd(
            ROOT / "train" / "dpo.py", ["--config", str(config(base, part, sft_weight=0.5, ref_cache=cache))]
        )
    )
    assert "0 computed" in proc.stdout + proc.stderr
    assert [r["step"] for r in metrics(part)] == [1, 2, 3, 4]
    resumed = llm_state(part / "final")
    for k in end:
        torch.testing.assert_close(resumed[k], end[k], atol=1e-6, rtol=1e-5)


def test_dpo_lora_reference_with_povid_noise_term(base, tmp_path):
    out = tmp_path / "povid"
    cfg = config(
        base,
        out,
        max_steps=2,
        reference="lora",
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        parts={"train_vision": False, "train_projector": True, "train_llm": True},
        povid={"inject_weight": 0.5, "noise_weight": 0.5, "noise_source": "argmax"},
    )
    run(torchrun_cmd(ROOT / "train" / "dpo.py", ["--config", str(cfg)]))
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2]
    # adapter starts at zero: policy == reference, both POVID terms are log 2, weights 0.5 + 0.5
    assert abs(recs[0]["loss"] - 0.693147) < 1e-4 and "noise/rewards/margin" in recs[0]
    assert (out / "final_adapter" / "adapter_model.safetensors").exists()


def test_reward_model_zero3_factual_prompt(base, tmp_path):
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.preference.batch import collate_shared, encode_pair
    from mmalign.preference.formats import load_preferences
    from mmalign.preference.reward_model import load_reward_model, reward_suffix

    out = tmp_path / "reward"
    prompt = ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt"
    cfg = config(base, out, max_steps=3, reward_prompt=str(prompt), eval_fraction=0.25, max_length=400)
    run(torchrun_cmd(ROOT / "train" / "reward.py", ["--config", str(cfg)]))
    recs = metrics(out)
    assert [r["step"] for r in recs][:3] == [1, 2, 3] and "eval/accuracy" in recs[-1]
    assert abs(recs[0]["loss"] - 0.693147) < 1e-5  # zero-initialised head: r = 0
    model, tok = load_reward_model(out / "final")
    assert model.head.weight.abs().sum() > 0
    pairs = load_preferences(base / "data" / "pairs.jsonl", media_root=base / "data")[:2]
    processor = MultimodalProcessor.for_model(model.lmm, tok)
    template = prompt.read_text().strip()
    enc = [encode_pair(processor, p, suffix=reward_suffix(template, p)) for p in pairs]
    with torch.no_grad():
        rewards = model(collate_shared(enc, processor.pad_token_id))
    assert rewards.shape == (2, 2) and torch.isfinite(rewards).all() and rewards.std() > 0


def test_dpo_frozen_reference_povid_generated_noise(base, tmp_path):
    """The frozen reference inside the ZeRO-3 engine; y_noise generated (synced_gpus) from noised images."""
    out = tmp_path / "frozen"
    cfg = config(
        base,
        out,
        max_steps=2,
        reference="frozen",
        povid={"inject_weight": 0.5, "noise_weight": 0.5, "noise_source": "generate", "max_new_tokens": 6},
    )
    run(torchrun_cmd(ROOT / "train" / "dpo.py", ["--config", str(cfg)]))
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2]
    assert abs(recs[0]["loss"] - 0.693147) < 1e-4  # policy == frozen reference at step 1
    assert abs(recs[1]["rewards/chosen"]) > 1e-5  # and they differ after a step
    start, end = llm_state(base / "base"), llm_state(out / "final")
    assert any(not torch.equal(start[k], end[k]) for k in start)
