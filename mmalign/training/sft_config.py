"""The typed config of ``train/sft.py`` (YAML in ``configs/sft/``): the shared
:class:`~mmalign.training.run_config.RunConfig` plus SFT's data and loss fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmalign.data.datasets import DataSource
from mmalign.training.run_config import RunConfig


@dataclass
class SFTConfig(RunConfig):
    """Supervised fine-tuning of an LMM.

    Attributes:
        out: run folder (checkpoints/, final/, metrics.jsonl, tb/, config.yaml).
        grow_llm_layers: append this many identity blocks to the LLM before training
            (LLaMA-Pro block expansion, :mod:`mmalign.models.grow`; 0 = none). The grown model
            starts out computing exactly what ``model`` does.
        data: LLaVA-format sources (mixed and shuffled).
        loss_reduction: ``token`` (LLaVA) or ``example`` (each answer weighs the same).
        group_by_length: form batches from examples of similar length, sorting blocks of this
            many global batches (0 = off; see :class:`mmalign.data.datasets.ExampleOrder`). Similar
            length often means one task per batch: on the tiny ShapeWorld preset (random LLM) that
            kept the model from using the image at all in 750 steps, so its recipe uses 1 instead:
            each optimizer step keeps its random mixture and only its micro-batches are sorted by
            length (with ``grad_accum`` > 1 this cuts the padding of mixed batches).
    """

    out: str = "runs/sft"
    grow_llm_layers: int = 0
    data: list[DataSource] = field(default_factory=list)
    loss_reduction: Literal["token", "example"] = "token"
    group_by_length: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grow_llm_layers < 0:
            raise ValueError(f"grow_llm_layers must be ≥ 0, got {self.grow_llm_layers}")
        if self.grow_llm_layers and self.lora.enabled:
            raise ValueError(
                "grow_llm_layers needs full LLM training, not LoRA: an adapter refers to a base "
                "checkpoint, which does not have the new blocks"
            )
        if self.loss_reduction not in ("token", "example"):
            raise ValueError(f"loss_reduction must be token or example, got {self.loss_reduction!r}")
