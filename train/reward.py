"""Bradley–Terry reward model (LMM + scalar head on the last token) under DeepSpeed (ZeRO-0…3, LoRA).

Launch:

    deepspeed --num_gpus 8 train/reward.py --config configs/reward/llava15_7b_fact_rlhf.yaml
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/reward.py --config configs/reward/tiny_shapeworld.yaml

Each step: this rank's pairs (deterministic in seed and step) become one shared-prefix row per
pair, ``[prompt | chosen + reward prompt | rejected + reward prompt]``; the encoder runs once per
pair; the head reads the last token of each segment; the loss is ``−log σ(r_w − r_l − m)``
(``m`` = the record's ``margin`` field, else ``margin`` from the config). With ``reward_prompt``
set, the reward prompt (``configs/prompts/``) carries the image's ground-truth captions and, for
multiple-choice data, the true answer — LLaVA-RLHF's factual augmentation. At the end: held-out
accuracy (``eval_fraction``), the consolidated model in ``out/final`` with
``reward_head.safetensors`` (load with :func:`mmalign.preference.reward_model.load_reward_model`).

Departures from LLaVA-RLHF: the head is zero-initialised (r = 0 at the start); no early stopping
(the paper stops early on a held-out split; here the held-out accuracy is logged at the end).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

from mmalign.cli import parse_run_args
from mmalign.config import ConfigError
from mmalign.data.check import check_dataset
from mmalign.data.datasets import ExampleOrder
from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.reward import bradley_terry_loss, reward_metrics
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import collate_shared, encode_pair
from mmalign.preference.config import RewardConfig, load_sources
from mmalign.preference.reward_model import RewardModel, reward_suffix, save_head
from mmalign.training.checkpoint import begin_run, export_final, prune_checkpoints, step_tag
from mmalign.training.dry_run import dry_run
from mmalign.training.logging import MetricsLogger
from mmalign.training.parts import apply_lora, configure_parts, lr_lambda
from mmalign.training.strategy import Strategy


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(RewardConfig, "mmalign reward model", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "pairs")
    out = Path(cfg.out)

    # 1. Processes, LMM + head, trainable parts (the head always trains).
    strategy = Strategy(cfg.strategy, seed=cfg.seed)
    strategy.setup_distributed()
    lmm, tokenizer = load_model(cfg.model, dtype=strategy.dtype, template=cfg.template)
    if cfg.lora.enabled:
        apply_lora(lmm, cfg.lora)
    param_groups = configure_parts(lmm, cfg.parts, cfg.optim)
    model = RewardModel(lmm)
    param_groups.append(
        {"params": list(model.head.parameters()), "lr": cfg.optim.lr, "weight_decay": 0.0, "name": "head"}
    )
    model.to(strategy.device)

    # 2. Data (a held-out share for accuracy), reward prompt, order.
    processor = MultimodalProcessor.for_model(lmm, tokenizer)
    template = Path(cfg.reward_prompt).read_text().strip() if cfg.reward_prompt else None

    def encode(pair, load_media=True):
        suffix = reward_suffix(template, pair, cfg.seed) if template else None
        return encode_pair(processor, pair, cfg.max_length, suffix=suffix, load_media=load_media)

    # Every record check runs before DeepSpeed, on the pairs as this trainer tokenises them.
    pairs, data_report = check_dataset(
        load_sources(cfg.data), processor, cfg.max_length, cfg.data_checks, lambda p: encode(p, False)
    )
    if strategy.is_main:
        print(data_report.summary(), flush=True)
    random.Random(cfg.seed).shuffle(held := list(pairs))
    n_eval = int(len(held) * cfg.eval_fraction)
    eval_pairs, train_pairs = held[:n_eval], (held[n_eval:] if n_eval else pairs)

    order = ExampleOrder(
        len(train_pairs),
        cfg.seed,
        cfg.strategy.micro_batch_size,
        cfg.strategy.grad_accum,
        strategy.world_size,
    )
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * len(train_pairs) / order.global_batch))

    # 3. Engine; resume.
    optimizer = strategy.make_optimizer(param_groups, cfg.optim.betas, cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, total_steps))
    engine = strategy.prepare(model, optimizer, scheduler, checkpointing=[lmm.llm], blank_media=[lmm])
    dev, dtype = strategy.device, strategy.dtype
    ckpt_dir = out / "checkpoints"
    run_shape = {
        "global_batch": order.global_batch,
        "world_size": strategy.world_size,
        "n_examples": len(train_pairs),
    }
    try:
        start_step = begin_run(strategy, cfg, out, run_shape)  # writes config.yaml after the check
    except ConfigError as exc:  # resuming with a changed config: the message names the keys
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = MetricsLogger(out, total_steps, start_step, enabled=strategy.is_main)
    log.write(f"[reward] {strategy.describe()}; {len(train_pairs)} train / {len(eval_pairs)} held-out pairs")

    # 4. The loop.
    engine.train()
    for step in range(start_step, total_steps):
        sums: dict[str, float] = {}
        step_lr, t_step = strategy.current_lrs()[0], time.time()
        for micro in range(cfg.strategy.grad_accum):
            batch_pairs = [train_pairs[i] for i in order.micro_batch(step, micro, strategy.rank)]
            batch = collate_shared([encode(p) for p in batch_pairs], processor.pad_token_id).to(dev, dtype)
            rewards = engine(batch)
            margin = torch.tensor([float(p.meta.get("margin", cfg.margin)) for p in batch_pairs], device=dev)
            loss = bradley_terry_loss(rewards[:, 0], rewards[:, 1], margin).mean()
            strategy.backward(loss)
            strategy.step()
            for k, v in {"loss": float(loss), **reward_metrics(rewards[:, 0], rewards[:, 1])}.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.strategy.grad_accum
        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            record = {k: strategy.all_reduce_mean(v) for k, v in sums.items()}
            record.update(lr=step_lr, grad_norm=strategy.grad_norm(), step_s=time.time() - t_step)
            log.log(done, record)
        if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
            strategy.save_checkpoint(ckpt_dir, step_tag(done), {"step": done, **run_shape})
            if strategy.is_main:
                prune_checkpoints(ckpt_dir, cfg.keep_last)

    # 5. Held-out accuracy (every rank runs the same number of forwards), checkpoint, export.
    if eval_pairs:
        engine.eval()
        mine = eval_pairs[strategy.rank :: strategy.world_size]
        per_rank = -(-len(eval_pairs) // strategy.world_size)
        correct, mb = 0.0, cfg.strategy.micro_batch_size
        for start in range(0, per_rank, mb):
            chunk = mine[start : start + mb] or eval_pairs[:1]
            with torch.no_grad():
                r = engine(collate_shared([encode(p) for p in chunk], processor.pad_token_id).to(dev, dtype))
            correct += float((r[:, 0] > r[:, 1]).float().sum()) if mine[start : start + mb] else 0.0
        log.log(total_steps, {"eval/accuracy": strategy.all_reduce_sum(correct) / len(eval_pairs)})
    strategy.save_checkpoint(ckpt_dir, step_tag(total_steps), {"step": total_steps, **run_shape})
    if strategy.is_main:
        prune_checkpoints(ckpt_dir, cfg.keep_last)
    lmm.always_run_media = False
    written = export_final(strategy, lmm, cfg.model, cfg.lora, out, cfg.export_lora, cfg.export_llava_hf)
    head = strategy.trainable_state_dict(model.head)
    if strategy.is_main:
        for name in ("final", "adapter"):
            if name in written:
                save_head(head, written[name])
    strategy.barrier()
    log.write(f"[reward] done: {json.dumps(written)}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
