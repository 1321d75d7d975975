"""Run on 2 ranks by tests/test_strategy_engines.py: inside ``generation_weights`` each rank
decodes its own prompt with stop ids and no ``synced_gpus`` — the ranks stop at different
lengths — then both leave the context and train one ZeRO-3 step together. Writes
``out/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_lmm
from mmalign.models.decoding import GenerationConfig, decode
from mmalign.training.parts import OptimConfig, PartsConfig, configure_parts
from mmalign.training.strategy import Strategy, StrategyConfig

ZERO3 = dict(zero_stage=3, micro_batch_size=1, stage3_max_live_parameters=1000, stage3_max_reuse_distance=0,
             stage3_param_persistence_threshold=0)  # fmt: skip


def main(base: str, out: str) -> None:
    strategy = Strategy(StrategyConfig(**ZERO3))
    strategy.setup_distributed()
    policy, tok = load_lmm(base)
    proc = MultimodalProcessor.for_model(policy, tok)
    groups = configure_parts(policy, PartsConfig(), OptimConfig(lr=1e-2))
    engine = strategy.prepare(policy, torch.optim.AdamW(groups), None, blank_media=[policy])
    rank = strategy.rank
    ex = Example("a", [{"role": "user", "content": "Is there a star?" if rank == 0 else "What colour?"}])
    prompt = proc.collate([proc.encode_prompt(ex)], padding_side="left")
    # rank 0 may stop at its first token, rank 1 runs 12: different lengths, no collective inside
    stops = () if rank else tuple(range(len(tok)))
    engine.eval()
    with torch.no_grad(), strategy.generation_weights(engine) as synced:
        cfg = GenerationConfig(max_new_tokens=12, stop_token_ids=stops, synced_gpus=synced)
        got = decode(engine.module, prompt["input_ids"], prompt["attention_mask"], None, None, cfg,
                     proc.pad_token_id)  # fmt: skip
    batch = proc.collate(
        [proc.encode(Example("b", [*ex.messages, {"role": "assistant", "content": "No."}]), 64)]
    )
    engine.train()
    loss = engine(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])["loss"]
    strategy.backward(loss)
    strategy.step()
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"synced": synced, "length": int(got.lengths[0]), "loss": float(loss.detach())})
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
