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

import random
from pathlib import Path

import torch

from mmalign.cli import parse_run_args
from mmalign.data.check import check_dataset
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import collate_shared, encode_pair
from mmalign.preference.config import RewardConfig, load_sources
from mmalign.preference.reward_model import RewardModel, reward_suffix, save_head
from mmalign.preference.step import reward_accuracy, reward_step
from mmalign.training.dry_run import dry_run
from mmalign.training.parts import apply_lora, configure_parts
from mmalign.training.run import TrainingRun, exit_after_run


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(RewardConfig, "mmalign reward model", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "pairs")

    # 1. Processes, LMM + head, trainable parts (the head always trains).
    run = TrainingRun(cfg, "reward")
    dev, dtype = run.device, run.dtype
    lmm, tokenizer = load_model(cfg.model, dtype=dtype, template=cfg.template)
    if cfg.lora.enabled:
        apply_lora(lmm, cfg.lora)
    param_groups = configure_parts(lmm, cfg.parts, cfg.optim)
    model = RewardModel(lmm)
    param_groups.append(
        {"params": list(model.head.parameters()), "lr": cfg.optim.lr, "weight_decay": 0.0, "name": "head"}
    )
    model.to(dev)

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
    if run.strategy.is_main:
        print(data_report.summary(), flush=True)
    random.Random(cfg.seed).shuffle(held := list(pairs))
    n_eval = int(len(held) * cfg.eval_fraction)
    eval_pairs, train_pairs = held[:n_eval], (held[n_eval:] if n_eval else pairs)
    run.plan(len(train_pairs))

    # 3. Engine; resume.
    optimizer, scheduler = run.optimizer(param_groups)
    engine = run.strategy.prepare(model, optimizer, scheduler, checkpointing=[lmm.llm], blank_media=[lmm])
    if run.begin([f"{len(train_pairs)} train / {len(eval_pairs)} held-out pairs"]) is None:
        return 2

    # 4. The loop.
    def step(indices: list[int]):
        batch_pairs = [train_pairs[i] for i in indices]
        batch = collate_shared([encode(p) for p in batch_pairs], processor.pad_token_id).to(dev, dtype)
        margin = torch.tensor([float(p.meta.get("margin", cfg.margin)) for p in batch_pairs], device=dev)
        return reward_step(engine, batch, margin)

    run.train(step)

    # 5. Held-out accuracy (every rank runs the same number of forwards), checkpoint, export.
    if eval_pairs:
        engine.eval()
        accuracy = reward_accuracy(
            run.strategy, engine, encode, eval_pairs, processor.pad_token_id, cfg.strategy.micro_batch_size
        )
        run.log.log(run.total_steps, {"eval/accuracy": accuracy})
    written = run.finish(lmm)
    head = run.strategy.trainable_state_dict(model.head)
    if run.strategy.is_main:
        for name in ("final", "adapter"):
            if name in written:
                save_head(head, written[name])
    run.strategy.barrier()
    run.close(written)
    return 0


if __name__ == "__main__":
    exit_after_run(main())  # no interpreter finalization: see its docstring
