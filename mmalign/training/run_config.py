"""The run config every trainer shares (:class:`RunConfig`): model, output, parts, LoRA,
optimizer, strategy, length, checkpoints, resume, logging, export. ``SFTConfig``, ``DPOConfig``
and ``RewardConfig`` extend it with their data and method fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmalign.data.templates import template_setting
from mmalign.training.ds_config import StrategyConfig
from mmalign.training.parts import LoraConfig, OptimConfig, PartsConfig


@dataclass
class RunConfig:
    """Fields of every training run (what :class:`~mmalign.training.run.TrainingRun` reads).

    Attributes:
        model: checkpoint to start from — an mmalign directory or a llava-hf folder.
        out: run folder (checkpoints/, final/, metrics.jsonl, tb/, config.yaml).
        parts: which parts train, at which learning rate.
        lora: LoRA on the LLM.
        optim: AdamW and its schedule.
        strategy: DeepSpeed options (ZeRO stage, precision, batch sizes).
        template: chat template overriding the checkpoint's: a built-in name (vicuna_v1, llama3,
            chatml, plain), a Jinja file or Jinja source; recorded in the exported checkpoint.
        max_steps: optimizer steps; if 0, ``epochs`` decides.
        epochs: passes over the data when ``max_steps`` is 0.
        max_length: tokens per example (media tokens are never truncated; an example that cannot fit is
            a counted skip or an error, as ``data_checks`` says).
        data_checks: what the load-time record checks do (:mod:`mmalign.data.check`): ``skip``
            — invalid records are an error, records ``max_length`` leaves nothing to train on
            (or pairs it leaves identical) are skipped and reported; ``strict`` — both are
            errors; ``skip_invalid`` — both are skipped and reported.
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
    out: str = "runs/run"
    parts: PartsConfig = field(default_factory=PartsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    template: str | None = None
    max_steps: int = 0
    epochs: float = 1.0
    max_length: int = 2048
    data_checks: Literal["strict", "skip", "skip_invalid"] = "skip"
    save_every: int = 0
    keep_last: int = 2
    resume: str = "auto"
    resume_changed_config: bool = False
    log_every: int = 10
    export_lora: Literal["adapter", "merged", "both"] = "both"
    export_llava_hf: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.epochs <= 0:
            raise ValueError("max_steps must be ≥ 0 and epochs > 0")
        if self.data_checks not in ("strict", "skip", "skip_invalid"):
            raise ValueError(f"data_checks must be strict, skip or skip_invalid, got {self.data_checks!r}")
        if self.keep_last < 1:
            raise ValueError("keep_last must be ≥ 1")
        template_setting(self.template)  # an unknown name or a missing file fails here
