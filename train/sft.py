"""Supervised fine-tuning of an LMM under DeepSpeed (LLaVA stage 1 / stage 2, LoRA or full).

Launch:

    # GPUs (one node)
    deepspeed --num_gpus 8 train/sft.py --config configs/sft/llava15_7b_stage2.yaml
    # several nodes: a hostfile of "host slots=N" lines
    deepspeed --hostfile hostfile --num_nodes 2 --num_gpus 8 train/sft.py --config ... key=value ...
    # CPU, 2 ranks (the embedded ShapeWorld default)
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/sft.py --config configs/shapeworld/sft.yaml
    # or torchrun --nproc_per_node 2 train/sft.py ...; or plain `python train/sft.py ...` (one process)

Each optimizer step: for each of ``grad_accum`` micro-batches, this rank takes its slice of the
step's global batch (a deterministic function of seed and step, so resume replays the same data),
encodes images/videos once through the encoder + projector, runs the LLM, and backpropagates the
next-token loss on assistant tokens; DeepSpeed reduces gradients, clips and steps AdamW; the LR
follows warmup + cosine. Checkpoints every ``save_every`` steps (``resume=auto`` continues from the
latest with optimizer, scheduler, data position and RNG restored); at the end the weights are
consolidated into ``out/final`` (an mmalign checkpoint directory; LoRA runs also get
``out/final_adapter``).

Departures from LLaVA's train.py: ``loss_reduction: example`` is offered (each answer's tokens
averaged first) because short answers otherwise drown under long captions; no packing, but
``group_by_length`` batches similar lengths (deterministically); the vision tower always runs
once per step on every rank (a blank image when the batch has none) so that ZeRO-3 never hangs
on mixed batches.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mmalign.cli import parse_run_args
from mmalign.config import ConfigError
from mmalign.data.check import check_dataset
from mmalign.data.datasets import ExampleOrder, length_hint, load_mixture
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_model
from mmalign.models.grow import grow_llm
from mmalign.training.checkpoint import begin_run, export_final, prune_checkpoints, step_tag
from mmalign.training.dry_run import dry_run
from mmalign.training.logging import MetricsLogger
from mmalign.training.parts import apply_lora, configure_parts, lr_lambda
from mmalign.training.sft_config import SFTConfig
from mmalign.training.strategy import Strategy


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(SFTConfig, "mmalign SFT", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "sft")
    out = Path(cfg.out)

    # 1. Processes, model, trainable parts.
    strategy = Strategy(cfg.strategy, seed=cfg.seed)
    strategy.setup_distributed()
    model, tokenizer = load_model(cfg.model, dtype=strategy.dtype, template=cfg.template)
    if cfg.grow_llm_layers:
        grow_llm(model.llm, cfg.grow_llm_layers)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    param_groups = configure_parts(model, cfg.parts, cfg.optim)
    model.to(strategy.device)

    # 2. Data: the mixture, its deterministic order, and how long to train.
    processor = MultimodalProcessor.for_model(model, tokenizer)
    # Every record check (roles, answers, placeholders vs media, media files, length) runs here,
    # on every rank alike, before DeepSpeed starts: a bad record fails the run now, naming file:line.
    examples, data_report = check_dataset(load_mixture(cfg.data), processor, cfg.max_length, cfg.data_checks)
    if strategy.is_main:
        print(data_report.summary(), flush=True)
    order = ExampleOrder(
        len(examples),
        cfg.seed,
        cfg.strategy.micro_batch_size,
        cfg.strategy.grad_accum,
        strategy.world_size,
        lengths=[length_hint(e, processor.image_tokens, processor.video_tokens) for e in examples]
        if cfg.group_by_length >= 1
        else None,
        group=cfg.group_by_length,
    )
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * len(examples) / order.global_batch))

    # 3. Optimizer, schedule, DeepSpeed engine; resume if asked.
    optimizer = strategy.make_optimizer(param_groups, cfg.optim.betas, cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, total_steps))
    engine = strategy.prepare(model, optimizer, scheduler, checkpointing=[model.llm], blank_media=[model])
    ckpt_dir = out / "checkpoints"
    run_shape = {
        "global_batch": order.global_batch,
        "world_size": strategy.world_size,
        "n_examples": len(examples),
    }
    try:
        start_step = begin_run(strategy, cfg, out, run_shape)  # writes config.yaml after the check
    except ConfigError as exc:  # resuming with a changed config: the message names the keys
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = MetricsLogger(
        out, total_steps, start_step, enabled=strategy.is_main
    )  # drops records after start_step
    log.write(f"[sft] {strategy.describe()}")
    log.write(
        f"[sft] {len(examples)} examples, {total_steps} steps of {order.global_batch} "
        f"(world {strategy.world_size}), start at step {start_step}"
    )

    # 4. The loop.
    engine.train()
    tokens_seen, t_last = 0, time.time()
    for step in range(start_step, total_steps):
        step_loss, step_lr = 0.0, strategy.current_lrs()[0]
        for micro in range(cfg.strategy.grad_accum):
            feats = [
                processor.encode(examples[i], cfg.max_length)
                for i in order.micro_batch(step, micro, strategy.rank)
            ]
            batch = processor.collate(feats)
            tokens_seen += int(batch["attention_mask"].sum())
            dev = strategy.device
            result = engine(
                batch["input_ids"].to(dev),
                batch["attention_mask"].to(dev),
                images=None if batch["images"] is None else batch["images"].to(dev, strategy.dtype),
                videos=None if batch["videos"] is None else batch["videos"].to(dev, strategy.dtype),
                labels=batch["labels"].to(dev),
                loss_reduction=cfg.loss_reduction,
            )
            strategy.backward(result["loss"])
            strategy.step()
            step_loss += result["loss"].item() / cfg.strategy.grad_accum
        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            elapsed = time.time() - t_last
            metrics = {
                "loss": strategy.all_reduce_mean(step_loss),
                "lr": step_lr,
                "grad_norm": strategy.grad_norm(),
                "tok/s": strategy.all_reduce_sum(tokens_seen) / max(elapsed, 1e-9),
                "epoch": order.epoch_of(done),
            }
            log.log(done, metrics)
            tokens_seen, t_last = 0, time.time()
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            strategy.save_checkpoint(ckpt_dir, step_tag(done), {"step": done, **run_shape})
            if strategy.is_main:
                prune_checkpoints(ckpt_dir, cfg.keep_last)

    # 5. Final checkpoint (for resume/continuation) and the consolidated export.
    strategy.save_checkpoint(ckpt_dir, step_tag(total_steps), {"step": total_steps, **run_shape})
    if strategy.is_main:
        prune_checkpoints(ckpt_dir, cfg.keep_last)
    written = export_final(
        strategy, model, cfg.model, cfg.lora, out, cfg.export_lora, cfg.export_llava_hf, cfg.grow_llm_layers
    )
    log.write(f"[sft] done: {json.dumps(written)}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
