"""Peak memory of ReMax vs PPO (and RLOO / GRPO) on the same policy, reward model and prompts, at a
size where weights and optimizer states — not the interpreter — fill the memory.

    OMP_NUM_THREADS=1 python benchmarks/remax_vs_ppo_memory.py                 # ~60 M-parameter LLM, CPU
    OMP_NUM_THREADS=1 python benchmarks/remax_vs_ppo_memory.py --hidden 256 --layers 2 --iterations 1  # smoke

ReMax's claim (Li et al., 2023, https://arxiv.org/abs/2310.10505): no value model, so about half
PPO's memory. On the tiny ShapeWorld model of the README's study the process's own libraries
dominate (peak above the start 0.56 vs 0.85 GiB); here a Llama of ``--hidden`` × ``--layers``
(default 768 × 8, ~60 M parameters) behind a small CLIP tower is built from config and saved
with a reward model on the same base (a seeded random head), and ``train/ppo.py`` runs
``--iterations`` iterations of each estimator as the study does (2 ZeRO-3 CPU ranks, full fine-
tuning, fp32, AdamW): PPO holds policy + reference + value model (its trunk from the reward model)
+ reward model; ReMax / RLOO / GRPO hold no value model. Each run's ``memory/peak_gib`` (largest
rank's peak resident set) and ``memory/peak_above_start_gib`` (the same above what the process held
before loading a model) are read from its ``metrics.jsonl`` and printed with the ratio to PPO's.
Responses are 16 tokens (the base is random), 8 prompts with one image each per iteration
(ReMax: 4 prompts × (sample + greedy); RLOO / GRPO: 2 prompts × 4 samples).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

ESTIMATORS = {
    "ppo": {"rollout_batch_size": 8, "num_samples": 1, "ppo_epochs": 2},
    "remax": {"preset": "remax", "rollout_batch_size": 4},
    "rloo": {"preset": "rloo", "rollout_batch_size": 2, "num_samples": 4},
    "grpo": {"preset": "grpo", "rollout_batch_size": 2, "num_samples": 4},
}


def build(root: Path, hidden: int, layers: int) -> int:
    """Tokenizer, policy, reward model (same base, seeded head) and 16 image prompts under ``root``;
    returns the LLM's parameter count."""
    import torch

    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from mmalign.models.heads import ScalarHead
    from mmalign.preference.reward_model import save_head
    from mmalign.shapeworld import WorldConfig, generate
    from mmalign.shapeworld.recipe.tiny_preset import shapeworld_texts

    data = root / "data"
    generate(data, n_images=16, n_videos=0, seed=3, cfg=WorldConfig(), progress=False)
    records = [r for r in json.loads((data / "llava" / "train.json").read_text()) if "image" in r][:16]
    prompts = [{**r, "captions": [r["conversations"][1]["value"]]} for r in records]
    (data / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    tok = train_bpe_tokenizer(shapeworld_texts(data), vocab_size=400)
    vision = tiny_vision(
        image_size=60, patch_size=20, hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128
    )
    model = tiny_lmm(
        tok, vision, llm_hidden_size=hidden, llm_layers=layers, llm_heads=max(1, hidden // 64),
        llm_intermediate_size=int(hidden * 8 / 3) // 64 * 64, seed=1,
    )  # fmt: skip
    save_lmm(model, tok, root / "policy")
    save_lmm(model, tok, root / "rm")
    torch.manual_seed(0)
    head = ScalarHead(hidden, zero_init=False)
    torch.nn.init.normal_(head.weight, std=0.05)
    save_head(head, root / "rm")
    return sum(p.numel() for p in model.llm.parameters())


def run(root: Path, estimator: str, iterations: int) -> dict[str, float]:
    out = root / estimator
    cfg = {
        "model": str(root / "policy"),
        "out": str(out),
        "prompts": str(root / "data" / "prompts.jsonl"),
        "media_root": str(root / "data"),
        "reward_model": str(root / "rm"),
        "reward_prompt": str(ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt"),
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "optim": {"lr": 1.0e-5, "schedule": "constant"},
        "strategy": {"zero_stage": 3, "precision": "fp32", "micro_batch_size": 1, "grad_accum": 1},
        "iterations": iterations,
        "max_new_tokens": 16,
        "max_prompt_length": 1024,
        "generation_batch_size": 8,
        "log_every": 1,
        "save_every": 0,
        "plot": False,
        **ESTIMATORS[estimator],
    }
    path = root / f"{estimator}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631",
        str(ROOT / "train" / "ppo.py"), "--config", str(path),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (root / f"{estimator}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"{estimator} failed ({done.returncode}):\n{done.stderr[-12000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {
        "peak": max(r["memory/peak_gib"] for r in records),
        "above": max(r["memory/peak_above_start_gib"] for r in records),
        "cpu_s": records[-1]["cpu_s"],
        "wall_s": records[-1]["time"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ReMax vs PPO peak memory on one policy")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--estimators", default="ppo,remax,rloo,grpo")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mmalign-remax-mem-") as tmp:
        root = Path(tmp)
        n = build(root, args.hidden, args.layers)
        print(
            f"LLM {args.hidden} × {args.layers} layers: {n / 1e6:.1f} M parameters (fp32 {n * 4 / 2**30:.2f} GiB)"
        )
        results = {e: run(root, e, args.iterations) for e in args.estimators.split(",")}
    ppo = results.get("ppo")
    print(
        "| estimator | peak, largest rank (GiB) | above start (GiB) | ÷ PPO (above start) | CPU s | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"{r['above'] / ppo['above']:.2f}" if ppo else "–"
        print(
            f"| {name} | {r['peak']:.3f} | {r['above']:.3f} | {ratio} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
