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

import torch

from mmalign.cli import parse_run_args
from mmalign.data.check import check_dataset
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import collate_shared, encode_pair
from mmalign.preference.config import DPOConfig, load_sources
from mmalign.preference.povid import noise_answers, noise_seed
from mmalign.preference.scoring import PreferenceModel
from mmalign.preference.step import precomputed_reference, preference_step, uses_povid
from mmalign.training.dry_run import dry_run
from mmalign.training.parts import apply_lora, configure_parts
from mmalign.training.run import TrainingRun, exit_after_run


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(DPOConfig, "mmalign DPO / POVID", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "pairs")

    # 1. Processes, policy (+ frozen reference), trainable parts.
    run = TrainingRun(cfg, "dpo")
    dev, dtype = run.device, run.dtype
    policy, tokenizer = load_model(cfg.model, dtype=dtype, template=cfg.template)
    ref_model = load_model(cfg.model, dtype=dtype)[0] if cfg.reference == "frozen" else None
    if cfg.lora.enabled:
        apply_lora(policy, cfg.lora)
    param_groups = configure_parts(policy, cfg.parts, cfg.optim)
    media_frozen = not (cfg.parts.train_vision or cfg.parts.train_projector)
    online = {"precomputed": "none", "frozen": "frozen", "lora": "lora"}[cfg.reference]
    model = PreferenceModel(policy, online, ref_model, media_frozen=media_frozen).to(dev)

    # 2. Data and its deterministic order.
    processor = MultimodalProcessor.for_model(policy, tokenizer)
    # Every record check (incl. identical chosen/rejected, also after truncation) runs before DeepSpeed.
    pairs, data_report = check_dataset(load_sources(cfg.data), processor, cfg.max_length, cfg.data_checks)
    if run.strategy.is_main:
        print(data_report.summary(), flush=True)
    run.plan(len(pairs))

    # 3. Engine; reference log-probs from the start weights (before any resume); resume.
    optimizer, scheduler = run.optimizer(param_groups)
    engine = run.strategy.prepare(
        model,
        optimizer,
        scheduler,
        checkpointing=[policy.llm],
        blank_media=[policy] + ([ref_model] if ref_model is not None else []),
    )
    cache, keys, notes = None, [], []
    if cfg.reference == "precomputed":
        cache, keys, note = precomputed_reference(
            run.strategy, engine, processor, pairs, cfg, cfg.ref_cache or run.out / "ref_cache"
        )
        notes.append(note)
    notes.append(f"reference {cfg.reference}; loss {cfg.loss_type} β={cfg.beta}")
    if run.begin(notes) is None:
        return 2

    # 4. The loop: POVID's y_noise (the policy's own answer under a noised image) is made per
    # micro-batch, seeded by (seed, step, micro-batch, rank) so a resumed run makes the same ones.
    noise_gen = torch.Generator()

    def step(indices: list[int]):
        enc = [encode_pair(processor, pairs[i], cfg.max_length) for i in indices]
        if uses_povid(cfg):
            noise_gen.manual_seed(noise_seed(cfg.seed, run.step, run.micro, run.strategy.rank))
            p = cfg.povid
            texts = noise_answers(
                policy, processor, enc, p.noise_source, p.noise_t, noise_gen, p.max_new_tokens,
                synced_gpus=run.strategy.zero_stage == 3,
            )  # fmt: skip
            enc = [
                encode_pair(processor, pairs[i], cfg.max_length, [t])
                for i, t in zip(indices, texts, strict=True)
            ]
        batch = collate_shared(enc, processor.pad_token_id, cfg.pairs_per_row).to(dev, dtype)
        reference = None if cache is None else cache.get([keys[i] for i in indices])
        return preference_step(engine, batch, reference, cfg)

    run.train(step)

    # 5. Final checkpoint and the consolidated export (the policy only).
    run.close(run.finish(policy))
    return 0


if __name__ == "__main__":
    exit_after_run(main())  # no interpreter finalization: see its docstring
