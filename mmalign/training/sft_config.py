"""The typed config of ``train/sft.py`` (YAML in ``configs/sft/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmalign.data.datasets import DataSource
from mmalign.data.templates import template_setting
from mmalign.training.parts import LoraConfig, OptimConfig, PartsConfig
from mmalign.training.strategy import StrategyConfig


@dataclass
class SFTConfig:
    """Supervised fine-tuning of an LMM.

    Attributes:
        model: checkpoint to start from — an mmalign directory or a llava-hf folder.
        grow_llm_layers: append this many identity blocks to the LLM before training
            (LLaMA-Pro block expansion, :mod:`mmalign.models.grow`; 0 = none). The grown model
            starts out computing exactly what ``model`` does.
        out: run folder (checkpoints/, final/, metrics.jsonl, tb/, config.yaml).
        data: LLaVA-format sources (mixed and shuffled).
        parts: which parts train, at which learning rate.
        lora: LoRA on the LLM.
        optim: AdamW and its schedule.
        strategy: DeepSpeed options (ZeRO stage, precision, batch sizes).
        template: chat template overriding the checkpoint's: a built-in name (vicuna_v1, llama3,
            chatml, plain), a Jinja file or Jinja source; recorded in the exported checkpoint.
        max_steps: optimizer steps; if 0, ``epochs`` decides.
        epochs: passes over the data when ``max_steps`` is 0.
        max_length: tokens per example (media tokens are never truncated; longer examples error).
        data_checks: what the load-time record checks do (:mod:`mmalign.data.check`): ``skip``
            — invalid records are an error, records ``max_length`` leaves nothing to train on
            are skipped and reported; ``strict`` — both are errors; ``skip_invalid`` — both are
            skipped and reported.
        loss_reduction: ``token`` (LLaVA) or ``example`` (each answer weighs the same).
        group_by_length: form batches from examples of similar length, sorting blocks of this
            many global batches (0 = off; see :class:`mmalign.data.datasets.ExampleOrder`). Similar
            length often means one task per batch: on the tiny ShapeWorld preset (random LLM) that
            kept the model from using the image at all in 750 steps, so its recipe uses 1 instead:
            each optimizer step keeps its random mixture and only its micro-batches are sorted by
            length (with ``grad_accum`` > 1 this cuts the padding of mixed batches).
        save_every: DeepSpeed checkpoint every N steps (0 = only at the end).
        keep_last: checkpoints kept on disk.
        resume: ``auto`` (latest checkpoint in ``out`` if any), ``none``, or a checkpoint folder.
        resume_changed_config: resume even though the config differs from the checkpoint's (the
            new values apply; ``config_history.yaml`` records the change). Without it such a
            resume is refused, naming the keys.
        log_every: steps between metric records.
        export_lora: for LoRA runs, what the final export holds: the PEFT ``adapter``, the
            ``merged`` weights, or ``both``.
        export_llava_hf: also write ``final_llava_hf/`` when the parts allow it.
        seed: data order and initialisation seed.
    """

    model: str = "runs/tiny-base"
    grow_llm_layers: int = 0
    out: str = "runs/sft"
    data: list[DataSource] = field(default_factory=list)
    parts: PartsConfig = field(default_factory=PartsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    template: str | None = None
    max_steps: int = 0
    epochs: float = 1.0
    max_length: int = 2048
    data_checks: Literal["strict", "skip", "skip_invalid"] = "skip"
    loss_reduction: Literal["token", "example"] = "token"
    group_by_length: int = 0
    save_every: int = 0
    keep_last: int = 2
    resume: str = "auto"
    resume_changed_config: bool = False
    log_every: int = 10
    export_lora: Literal["adapter", "merged", "both"] = "both"
    export_llava_hf: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.grow_llm_layers < 0:
            raise ValueError(f"grow_llm_layers must be ≥ 0, got {self.grow_llm_layers}")
        if self.grow_llm_layers and self.lora.enabled:
            raise ValueError(
                "grow_llm_layers needs full LLM training, not LoRA: an adapter refers to a base "
                "checkpoint, which does not have the new blocks"
            )
        if self.max_steps < 0 or self.epochs <= 0:
            raise ValueError("max_steps must be ≥ 0 and epochs > 0")
        if self.data_checks not in ("strict", "skip", "skip_invalid"):
            raise ValueError(f"data_checks must be strict, skip or skip_invalid, got {self.data_checks!r}")
        if self.loss_reduction not in ("token", "example"):
            raise ValueError(f"loss_reduction must be token or example, got {self.loss_reduction!r}")
        if self.keep_last < 1:
            raise ValueError("keep_last must be ≥ 1")
        template_setting(self.template)  # an unknown name or a missing file fails here
