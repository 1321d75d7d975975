"""Run by tests/test_zero3_multiproc.py under torchrun (2 ranks): ZeRO-3 with parameters that are
never kept resident (stage3_max_live_parameters 1000, reuse distance 0), so any rank that runs a
different sequence of modules than the other would hang the gathers.

1. Generation where ranks produce different lengths (rank r: 2 + 5 r new tokens), synced_gpus.
2. Training steps where the ranks' batches differ in modality each step (image / video / text).
Writes ``out/rank{r}.json`` with generated ids and per-step losses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_lmm
from mmalign.training.parts import OptimConfig, PartsConfig, configure_parts
from mmalign.training.strategy import Strategy, StrategyConfig


def main(base: str, data: str, out: str) -> None:
    strategy = Strategy(
        StrategyConfig(
            zero_stage=3,
            micro_batch_size=1,
            stage3_max_live_parameters=1000,
            stage3_max_reuse_distance=0,
            stage3_param_persistence_threshold=0,
        )
    )
    strategy.setup_distributed()
    rank = strategy.rank
    model, tok = load_lmm(base)
    proc = MultimodalProcessor.for_model(model, tok)
    groups = configure_parts(model, PartsConfig(), OptimConfig(lr=1e-3))
    engine = strategy.prepare(model, torch.optim.AdamW(groups), None, blank_media=[model])
    module = engine.module
    root = Path(data)
    image = Example(
        "img",
        [
            {"role": "user", "content": "<image>\nWhat is in this image?"},
            {"role": "assistant", "content": "A red circle."},
        ],
        images=[root / "img.png"],
    )
    video = Example(
        "vid",
        [
            {"role": "user", "content": "<video>\nHow does it move?"},
            {"role": "assistant", "content": "Right."},
        ],
        videos=[root / "vid.mp4"],
    )
    text = Example(
        "txt", [{"role": "user", "content": "Is there a star?"}, {"role": "assistant", "content": "No."}]
    )

    # 1. Generation with different lengths per rank.
    engine.eval()
    prompt = proc.collate([proc.encode_prompt(image if rank == 0 else video)], padding_side="left")
    new = module.generate(
        prompt["input_ids"],
        prompt["attention_mask"],
        images=prompt["images"],
        videos=prompt["videos"],
        max_new_tokens=2 + 5 * rank,
        eos_token_id=None,
        pad_token_id=proc.pad_token_id,
        synced_gpus=True,
    )

    # 2. Mixed-modality training steps.
    engine.train()
    plan = [(image, text), (video, image), (text, video), (image, image)]
    losses = []
    for pair in plan:
        ex = pair[rank]
        batch = proc.collate([proc.encode(ex)])
        result = engine(
            batch["input_ids"],
            batch["attention_mask"],
            images=batch["images"],
            videos=batch["videos"],
            labels=batch["labels"],
        )
        engine.backward(result["loss"])
        engine.step()
        losses.append(result["loss"].item())
    Path(out, f"rank{rank}.json").write_text(json.dumps({"generated": new[0].tolist(), "losses": losses}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
