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

from mmalign.cli import parse_run_args
from mmalign.data.check import check_dataset
from mmalign.data.datasets import length_hint, load_mixture
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_model
from mmalign.models.grow import grow_llm
from mmalign.training.dry_run import dry_run
from mmalign.training.parts import apply_lora, configure_parts
from mmalign.training.run import TrainingRun, exit_after_run
from mmalign.training.sft_config import SFTConfig
from mmalign.training.sft_step import sft_step


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_run_args(SFTConfig, "mmalign SFT", argv)
    if args.dry_run:
        return dry_run(cfg, args.dry_run, "sft")

    # 1. Processes, model, trainable parts.
    run = TrainingRun(cfg, "sft")
    model, tokenizer = load_model(cfg.model, dtype=run.dtype, template=cfg.template)
    if cfg.grow_llm_layers:
        grow_llm(model.llm, cfg.grow_llm_layers)
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora)
    param_groups = configure_parts(model, cfg.parts, cfg.optim)
    model.to(run.device)

    # 2. Data: the mixture, its deterministic order, and how long to train.
    processor = MultimodalProcessor.for_model(model, tokenizer)
    # Every record check (roles, answers, placeholders vs media, media files, length) runs here,
    # on every rank alike, before DeepSpeed starts: a bad record fails the run now, naming file:line.
    examples, data_report = check_dataset(load_mixture(cfg.data), processor, cfg.max_length, cfg.data_checks)
    if run.strategy.is_main:
        print(data_report.summary(), flush=True)
    lengths = [length_hint(e, processor.image_tokens, processor.video_tokens) for e in examples]
    run.plan(len(examples), lengths if cfg.group_by_length >= 1 else None, cfg.group_by_length)

    # 3. Optimizer, schedule, DeepSpeed engine; resume if asked.
    optimizer, scheduler = run.optimizer(param_groups)
    engine = run.strategy.prepare(model, optimizer, scheduler, checkpointing=[model.llm], blank_media=[model])
    if run.begin() is None:
        return 2

    # 4. The loop: each micro-batch is encoded, collated and scored by the SFT step.
    def step(indices: list[int]):
        batch = processor.collate([processor.encode(examples[i], cfg.max_length) for i in indices])
        return sft_step(engine, batch, run.device, run.dtype, cfg.loss_reduction)

    run.train(step)

    # 5. Final checkpoint (for resume/continuation) and the consolidated export.
    run.close(run.finish(model, cfg.grow_llm_layers))
    return 0


if __name__ == "__main__":
    exit_after_run(main())  # no interpreter finalization: see its docstring
