"""Which parts train, at which learning rate; LoRA through peft; the LR schedule.

LLaVA's recipes in these terms: stage 1 trains the projector only (vision and LLM frozen);
stage 2 trains projector + LLM (vision frozen). LoRA wraps the LLM with peft adapters; its base
weights then stay frozen and "the reference model" of later trainers is the same LLM with the
adapter disabled (:func:`reference_mode`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mmalign.models.lmm import LMM

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class PartsConfig:
    """Trainability and learning rate per part (``*_lr = None`` → the base learning rate).

    Attributes:
        train_vision: train the image encoder (LLaVA keeps it frozen).
        train_projector: train the projector (and the video temporal mixer).
        train_llm: train the LLM (its LoRA adapter only when ``lora.enabled``).
        vision_lr / projector_lr / llm_lr: that part's learning rate (None = ``optim.lr``).
    """

    train_vision: bool = False
    train_projector: bool = True
    train_llm: bool = True
    vision_lr: float | None = None
    projector_lr: float | None = None
    llm_lr: float | None = None

    def __post_init__(self) -> None:
        if not (self.train_vision or self.train_projector or self.train_llm):
            raise ValueError("nothing to train: enable at least one of train_vision/projector/llm")


@dataclass
class LoraConfig:
    """LoRA on the LLM (peft). ``enabled=False`` trains the LLM's own weights when ``train_llm``.

    Attributes:
        enabled: wrap the LLM with LoRA adapters; its base weights stay frozen.
        r: adapter rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: names of the LLM's linear layers to adapt (those present are used).
    """

    enabled: bool = False
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA r must be ≥ 1, got {self.r}")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay to ``min_lr_ratio × lr``.

    Attributes:
        lr: peak learning rate (per-part ``parts.*_lr`` override it).
        weight_decay: AdamW decoupled weight decay (never on biases and norms).
        betas: AdamW β1, β2.
        eps: AdamW ε.
        warmup_steps: linear warmup steps from ``lr / (warmup + 1)``.
        min_lr_ratio: the learning rate at the last step, as a share of ``lr``.
        schedule: ``cosine``, ``linear`` or ``constant`` after warmup.
    """

    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "constant", "linear"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {self.schedule!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


def lr_lambda(cfg: OptimConfig, total_steps: int):
    """Multiplier of the base LR at optimizer step ``s``: linear warmup from ``1/(warmup+1)``, then
    the schedule, reaching ``min_lr_ratio`` at the last step (``total_steps - 1``)."""

    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return f


def apply_lora(model: LMM, cfg: LoraConfig) -> None:
    """Wrap ``model.llm`` with peft LoRA adapters (in place)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    present = {name.split(".")[-1] for name, _ in model.llm.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA target modules {cfg.target_modules} exist in the LLM")
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    model.llm = get_peft_model(model.llm, peft_cfg)


def is_lora(model: LMM) -> bool:
    return hasattr(model.llm, "peft_config")


@contextmanager
def reference_mode(model: LMM) -> Iterator[None]:
    """Run the LoRA model with its adapter disabled (the base = the reference policy)."""
    ctx = model.llm.disable_adapter() if is_lora(model) else nullcontext()
    with ctx:
        yield


def configure_parts(model: LMM, parts: PartsConfig, optim: OptimConfig) -> list[dict[str, Any]]:
    """Set ``requires_grad`` per part and return AdamW param groups with per-part learning rates.

    No weight decay on biases and norms (1-D tensors), as in most LLM recipes. ``train_vision``
    covers every encoder: the image encoder and a separate video encoder (Video-LLaVA's
    ``video_tower``), both at ``vision_lr``.
    """
    lora = is_lora(model)
    spec = [
        ("vision", model.vision, parts.train_vision, parts.vision_lr),
        ("projector", model.projector, parts.train_projector, parts.projector_lr),
        ("llm", model.llm, parts.train_llm, parts.llm_lr),
    ]
    if getattr(model, "video_vision", None) is not None:  # Video-LLaVA's video tower: a vision part
        spec.insert(1, ("video_vision", model.video_vision, parts.train_vision, parts.vision_lr))
    if model.temporal is not None:  # the video mixer sits with the projector, between encoder and LLM
        spec.insert(-1, ("temporal", model.temporal, parts.train_projector, parts.projector_lr))
    groups: list[dict[str, Any]] = []
    for name, module, trainable, lr in spec:
        params = _set_trainable(module, trainable, only_lora=lora and name == "llm")
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for group, wd in ((decay, optim.weight_decay), (no_decay, 0.0)):
            if group:
                groups.append(
                    {"params": group, "lr": optim.lr if lr is None else lr, "weight_decay": wd, "name": name}
                )
    if not groups:
        raise ValueError("no trainable parameters")
    model.cfg.vision.frozen = not parts.train_vision  # LMM.train() keeps a frozen tower in eval mode
    if getattr(model.cfg, "video_vision", None) is not None:
        model.cfg.video_vision.frozen = not parts.train_vision
    return groups


def _set_trainable(module: nn.Module, trainable: bool, only_lora: bool) -> list[nn.Parameter]:
    out = []
    for name, p in module.named_parameters():
        on = trainable and (not only_lora or "lora_" in name)
        p.requires_grad_(on)
        if on:
            out.append(p)
    return out
