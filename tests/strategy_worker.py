"""Run by tests/test_strategy_engines.py in one process (world 1, ZeRO-3, nothing resident):
explicit model rules, a frozen inference engine, two trainable engines checkpointed together,
and the gather-once generation context. Writes ``out/result.json``."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_lmm
from mmalign.training.parts import OptimConfig, PartsConfig, configure_parts
from mmalign.training.strategy import Strategy, StrategyConfig

ZERO3 = dict(zero_stage=3, micro_batch_size=1, stage3_max_live_parameters=1000, stage3_max_reuse_distance=0,
             stage3_param_persistence_threshold=0)  # fmt: skip


def main(base: str, out: str) -> None:
    result: dict = {}
    strategy = Strategy(StrategyConfig(**ZERO3, gradient_checkpointing=True))
    strategy.setup_distributed()
    policy, tok = load_lmm(base)
    value, _ = load_lmm(base)
    reference = copy.deepcopy(policy)
    proc = MultimodalProcessor.for_model(policy, tok)
    try:
        strategy.prepare(
            policy, torch.optim.AdamW(configure_parts(policy, PartsConfig(), OptimConfig())), None
        )
    except ValueError as exc:
        result["no_modules_error"] = str(exc)
    groups = configure_parts(policy, PartsConfig(), OptimConfig(lr=1e-2))
    engine = strategy.prepare(policy, torch.optim.AdamW(groups), None, checkpointing=[policy.llm],
                              blank_media=[policy])  # fmt: skip
    result["checkpointing"] = bool(policy.llm.is_gradient_checkpointing)
    result["blank_media"] = bool(policy.always_run_media)
    vgroups = configure_parts(value, PartsConfig(), OptimConfig(lr=1e-2))
    v_engine = strategy.prepare(
        value, torch.optim.AdamW(vgroups), None, checkpointing=[value.llm], name="value"
    )
    ref = strategy.prepare_frozen(reference, blank_media=[reference])
    result["describe"] = strategy.describe()
    ex = Example(
        "a", [{"role": "user", "content": "Is there a star?"}, {"role": "assistant", "content": "No."}]
    )
    batch = proc.collate([proc.encode(ex, 64)])
    prompt = proc.collate([proc.encode_prompt(ex)], padding_side="left")

    def gen(module, synced):
        return module.generate(prompt["input_ids"], prompt["attention_mask"], max_new_tokens=6,
                               eos_token_id=None, pad_token_id=proc.pad_token_id, synced_gpus=synced).tolist()  # fmt: skip

    engine.eval()
    with torch.no_grad():
        layered = gen(engine.module, True)
        with strategy.generation_weights(engine) as synced:
            result["synced_inside"] = synced
            result["full_inside"] = all(p.data.numel() == p.ds_numel for p in engine.module.parameters())
            once = gen(engine.module, synced)
        result["partitioned_after"] = all(p.data.numel() == 0 for p in engine.module.parameters())
        result["generate_equal"] = layered == once
        ref_loss = float(ref(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])["loss"])
    for eng in (engine, v_engine):
        eng.train()
        loss = eng(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])["loss"]
        strategy.backward(loss, eng)
        strategy.step(eng)
    with torch.no_grad():
        result["ref_unchanged"] = ref_loss == float(
            ref(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])["loss"]
        )
    strategy.save_checkpoint(Path(out) / "ckpt", "step_000001", {"step": 1})
    with strategy.gathered(value):
        saved_value = {n: p.detach().clone() for n, p in value.named_parameters()}
    eng = v_engine
    eng.train()
    loss = eng(batch["input_ids"], batch["attention_mask"], labels=batch["labels"])["loss"]
    strategy.backward(loss, eng)
    strategy.step(eng)
    state = strategy.load_checkpoint(Path(out) / "ckpt")
    with strategy.gathered(value):
        result["value_restored"] = all(torch.equal(saved_value[n], p) for n, p in value.named_parameters())
    result["client_state"] = {k: v for k, v in state.items() if k in ("step", "tag")}
    result["ckpt_files"] = sorted(
        str(p.relative_to(Path(out) / "ckpt")) for p in (Path(out) / "ckpt").rglob("*") if p.is_dir()
    )
    Path(out, "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
