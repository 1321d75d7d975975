"""DPO-family and POVID training of an LMM under DeepSpeed (ZeRO-0…3, LoRA or full).

Launch:

    # GPUs
    deepspeed --num_gpus 8 train/dpo.py --config configs/dpo/llava15_7b_povid.yaml
    # CPU, 2 ranks, the tiny ShapeWorld model (pairs from `python -m mmalign.preference.shapeworld_pairs`)
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/dpo.py --config configs/dpo/tiny_shapeworld.yaml
    # or torchrun --nproc_per_node 2 train/dpo.py ...; or plain `python train/dpo.py ...` (one process)

Each optimizer step, per micro-batch: this rank's pairs (a deterministic function of seed and
step, so resume replays the same data) are tokenised into ONE row per pair,
``[prompt | chosen | rejected]`` (POVID stage 2: ``| y_noise`` too), with a 4-D mask that hides
the responses from each other and position ids restarting after the prompt; the encoder and
projector run once over the pair's media; the LM head runs only at response positions; the loss
(DPO / cDPO / IPO / hinge, + γ·SFT, or POVID's two terms) uses reference log-probs that are

* ``precomputed`` (default): one no-grad pass over the data with the start weights before
  training, cached in ``ref_cache`` keyed by a content hash (model, precision, tokens, media
  bytes) — no reference model is held while training;
* ``frozen``: a frozen copy inside the engine (ZeRO-3 shards it), reusing the policy's media
  features when encoder and projector are frozen;
* ``lora``: the policy with its LoRA adapter disabled, on the same input embeddings.

Departures from the papers' code: POVID's y_noise is scored under the clean image (the paper's
DPO over one prompt); its distortion is applied after resizing; ``argmax`` (the authors' code)
and ``generate`` (the paper) are both offered, argmax by default. IPO uses summed log-probs
unless ``average_log_prob: true`` (the IPO paper and TRL average them).
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
from mmalign.data.datasets import ExampleOrder
from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.dpo import dpo_loss, povid_loss, preference_metrics, sft_term
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import collate_shared, encode_pair
from mmalign.preference.config import DPOConfig, load_sources
from mmalign.preference.povid import noise_answers
from mmalign.preference.ref_cache import ReferenceCache, model_fingerprint, pair_key, precompute
from mmalign.preference.scoring import PreferenceModel
from mmalign.training.checkpoint import begin_run, export_final, prune_checkpoints, step_tag
from mmalign.training.dry_run import dry_run
from mmalign.training.logging import MetricsLogger
from mmalign.training.parts import apply_lora, configure_parts, lr_lambda
from mmalign.training.strategy import Strategy


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(DPOConfig, "mmalign DPO / POVID", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "pairs")
    out = Path(cfg.out)

    # 1. Processes, policy (+ frozen reference), trainable parts.
    strategy = Strategy(cfg.strategy, seed=cfg.seed)
    strategy.setup_distributed()
    policy, tokenizer = load_model(cfg.model, dtype=strategy.dtype, template=cfg.template)
    ref_model = load_model(cfg.model, dtype=strategy.dtype)[0] if cfg.reference == "frozen" else None
    if cfg.lora.enabled:
        apply_lora(policy, cfg.lora)
    param_groups = configure_parts(policy, cfg.parts, cfg.optim)
    media_frozen = not (cfg.parts.train_vision or cfg.parts.train_projector)
    online = {"precomputed": "none", "frozen": "frozen", "lora": "lora"}[cfg.reference]
    model = PreferenceModel(policy, online, ref_model, media_frozen=media_frozen).to(strategy.device)

    # 2. Data and its deterministic order.
    processor = MultimodalProcessor.for_model(policy, tokenizer)
    # Every record check (incl. identical chosen/rejected, also after truncation) runs before DeepSpeed.
    pairs, data_report = check_dataset(load_sources(cfg.data), processor, cfg.max_length, cfg.data_checks)
    if strategy.is_main:
        print(data_report.summary(), flush=True)
    order = ExampleOrder(
        len(pairs), cfg.seed, cfg.strategy.micro_batch_size, cfg.strategy.grad_accum, strategy.world_size
    )
    total_steps = cfg.max_steps or max(1, int(cfg.epochs * len(pairs) / order.global_batch))

    # 3. Engine; reference log-probs from the start weights (before any resume); resume.
    optimizer = strategy.make_optimizer(param_groups, cfg.optim.betas, cfg.optim.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, total_steps))
    engine = strategy.prepare(
        model,
        optimizer,
        scheduler,
        checkpointing=[policy.llm],
        blank_media=[policy] + ([ref_model] if ref_model is not None else []),
    )
    dev, dtype = strategy.device, strategy.dtype
    cache, keys, notes = None, [], []
    if cfg.reference == "precomputed":
        fingerprint = model_fingerprint(cfg.model) if Path(cfg.model).is_dir() else cfg.model
        keys = [
            pair_key(
                encode_pair(processor, p, cfg.max_length, load_media=False),
                p,
                fingerprint,
                cfg.strategy.precision,
            )
            for p in pairs
        ]
        cache = ReferenceCache(cfg.ref_cache or out / "ref_cache")
        strategy.barrier()

        def score(indices: list[int]) -> torch.Tensor:
            enc = [encode_pair(processor, pairs[i], cfg.max_length) for i in indices]
            with torch.no_grad():
                return engine(collate_shared(enc, processor.pad_token_id).to(dev, dtype), False)["policy"]

        engine.eval()
        t0 = time.time()
        n = precompute(
            cache,
            keys,
            score,
            cfg.strategy.micro_batch_size,
            strategy.rank,
            strategy.world_size,
            f"rank{strategy.rank}-{int(t0)}",
        )
        strategy.barrier()
        cache.reload()
        notes.append(
            f"[dpo] reference log-probs: {int(strategy.all_reduce_sum(n))} computed in {time.time() - t0:.1f}s, {len(cache)} cached"
        )
    ckpt_dir = out / "checkpoints"
    run_shape = {
        "global_batch": order.global_batch,
        "world_size": strategy.world_size,
        "n_examples": len(pairs),
    }
    try:
        start_step = begin_run(strategy, cfg, out, run_shape)  # writes config.yaml after the check
    except ConfigError as exc:  # resuming with a changed config: the message names the keys
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # (drops metric records after start_step: a resumed run redoes them)
    log = MetricsLogger(out, total_steps, start_step, enabled=strategy.is_main)
    for note in notes:
        log.write(note)
    log.write(f"[dpo] {strategy.describe()}; reference {cfg.reference}; loss {cfg.loss_type} β={cfg.beta}")
    log.write(
        f"[dpo] {len(pairs)} pairs, {total_steps} steps of {order.global_batch}, start at step {start_step}"
    )

    # 4. The loop.
    engine.train()
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + strategy.rank)
    for step in range(start_step, total_steps):
        sums: dict[str, float] = {}
        step_lr, t_step = strategy.current_lrs()[0], time.time()
        for micro in range(cfg.strategy.grad_accum):
            idx = order.micro_batch(step, micro, strategy.rank)
            enc = [encode_pair(processor, pairs[i], cfg.max_length) for i in idx]
            if cfg.povid.noise_weight > 0:
                noise_gen.manual_seed(hash((cfg.seed, step, micro, strategy.rank)) % 2**31)
                texts = noise_answers(
                    policy,
                    processor,
                    enc,
                    cfg.povid.noise_source,
                    cfg.povid.noise_t,
                    noise_gen,
                    cfg.povid.max_new_tokens,
                    synced_gpus=strategy.zero_stage == 3,
                )
                enc = [
                    encode_pair(processor, pairs[i], cfg.max_length, [t])
                    for i, t in zip(idx, texts, strict=True)
                ]
            batch = collate_shared(enc, processor.pad_token_id, cfg.pairs_per_row).to(dev, dtype)
            result = engine(batch)
            pol = result["policy"]
            ref = result["reference"] if cache is None else cache.get([keys[i] for i in idx]).to(dev)
            lengths = batch.lengths().view(pol.shape).to(dev)
            if cfg.average_log_prob:
                pol, ref = pol / lengths.clamp(min=1), ref / lengths.clamp(min=1)
            kw = {"beta": cfg.beta, "loss_type": cfg.loss_type, "label_smoothing": cfg.label_smoothing}
            if pol.shape[1] == 3:
                losses, term, noise_term = povid_loss(
                    pol[:, 0],
                    pol[:, 1],
                    pol[:, 2],
                    ref[:, 0],
                    ref[:, 1],
                    ref[:, 2],
                    inject_weight=cfg.povid.inject_weight,
                    noise_weight=cfg.povid.noise_weight,
                    **kw,
                )
                metrics = {**preference_metrics(term), **preference_metrics(noise_term, "noise/")}
            else:
                term = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], **kw)
                losses, metrics = term.losses, preference_metrics(term)
            loss = losses.mean()
            if cfg.sft_weight:
                sft = sft_term(result["policy"][:, 0], lengths[:, 0]).mean()
                loss = loss + cfg.sft_weight * sft
                metrics["sft_nll"] = float(sft)
            strategy.backward(loss)
            strategy.step()
            for k, v in {"loss": float(loss), **metrics}.items():
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

    # 5. Final checkpoint and the consolidated export (the policy only).
    strategy.save_checkpoint(ckpt_dir, step_tag(total_steps), {"step": total_steps, **run_shape})
    if strategy.is_main:
        prune_checkpoints(ckpt_dir, cfg.keep_last)
    policy.always_run_media = False
    written = export_final(strategy, policy, cfg.model, cfg.lora, out, cfg.export_lora, cfg.export_llava_hf)
    log.write(f"[dpo] done: {json.dumps(written)}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
