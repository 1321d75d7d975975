"""Typed configs of ``train/dpo.py`` (``configs/dpo/``) and ``train/reward.py`` (``configs/reward/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmalign.losses.dpo import LOSS_TYPES
from mmalign.preference.formats import FORMATS, PreferencePair, load_preferences
from mmalign.training.parts import LoraConfig, OptimConfig, PartsConfig
from mmalign.training.strategy import StrategyConfig


@dataclass
class PreferenceSource:
    """One preference file: ``format`` is ``auto`` or one of povid / llava_rlhf / hound / trl."""

    path: str
    format: str = "auto"
    media_root: str | None = None
    max_records: int | None = None
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"format must be auto or one of {FORMATS}, got {self.format!r}")
        if self.repeat < 1:
            raise ValueError("repeat must be ≥ 1")

    def load(self) -> list[PreferencePair]:
        pairs = load_preferences(self.path, self.format, self.media_root)  # type: ignore[arg-type]
        if self.max_records is not None:
            pairs = pairs[: self.max_records]
        if not pairs:
            raise ValueError(f"preference source {self.path} has no records")
        return pairs * self.repeat


def load_sources(sources: list[PreferenceSource]) -> list[PreferencePair]:
    if not sources:
        raise ValueError("no preference data configured")
    return [p for s in sources for p in s.load()]


@dataclass
class PovidConfig:
    """POVID's second term. ``noise_weight = 0`` → plain DPO on (chosen, rejected) = stage 1."""

    inject_weight: float = 1.0
    noise_weight: float = 0.0
    noise_source: Literal["argmax", "generate"] = "argmax"
    noise_t: int = 500
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if self.inject_weight < 0 or self.noise_weight < 0:
            raise ValueError("POVID weights must be ≥ 0")
        if self.noise_source not in ("argmax", "generate"):
            raise ValueError(f"noise_source must be argmax or generate, got {self.noise_source!r}")


@dataclass
class TrainRunConfig:
    """Fields shared by preference trainers (see ``SFTConfig`` for their meaning)."""

    model: str = "checkpoints/tiny-shapeworld"
    out: str = "runs/dpo"
    data: list[PreferenceSource] = field(default_factory=list)
    parts: PartsConfig = field(default_factory=PartsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    max_steps: int = 0
    epochs: float = 1.0
    max_length: int = 1024
    save_every: int = 0
    keep_last: int = 2
    resume: str = "auto"
    log_every: int = 10
    export_lora: Literal["adapter", "merged", "both"] = "both"
    export_llava_hf: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 0 or self.epochs <= 0:
            raise ValueError("max_steps must be ≥ 0 and epochs > 0")
        if self.keep_last < 1:
            raise ValueError("keep_last must be ≥ 1")


@dataclass
class DPOConfig(TrainRunConfig):
    """DPO family / POVID training.

    Attributes:
        beta: KL strength β.
        loss_type: ``sigmoid`` (DPO, cDPO with ``label_smoothing``), ``ipo`` or ``hinge``.
        label_smoothing: cDPO ε.
        average_log_prob: length-averaged log-probs (IPO's paper and TRL's IPO use them).
        sft_weight: γ of the SFT term γ·NLL(y_w) per token.
        reference: ``precomputed`` (one pass before training, cached on disk), ``frozen`` (a
            frozen copy held in the engine) or ``lora`` (the adapter disabled; needs ``lora``).
        ref_cache: cache folder for ``precomputed`` (default ``<out>/ref_cache``).
        pairs_per_row: pairs packed into one shared-prefix row.
        povid: POVID's two-term objective (needs an online reference when ``noise_weight > 0``).
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    average_log_prob: bool = False
    sft_weight: float = 0.0
    reference: Literal["precomputed", "frozen", "lora"] = "precomputed"
    ref_cache: str | None = None
    pairs_per_row: int = 1
    povid: PovidConfig = field(default_factory=PovidConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError("beta must be > 0")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.reference not in ("precomputed", "frozen", "lora"):
            raise ValueError(f"reference must be precomputed, frozen or lora, got {self.reference!r}")
        if self.reference == "lora" and not self.lora.enabled:
            raise ValueError("reference=lora needs lora.enabled (the reference is the adapter-disabled base)")
        if self.povid.noise_weight > 0 and self.reference == "precomputed":
            raise ValueError(
                "POVID's noise term scores the policy's own answers: use reference frozen or lora"
            )
        if self.pairs_per_row < 1 or self.sft_weight < 0:
            raise ValueError("pairs_per_row must be ≥ 1 and sft_weight ≥ 0")


@dataclass
class RewardConfig(TrainRunConfig):
    """Bradley–Terry reward model.

    Attributes:
        margin: a constant margin in ``−log σ(r_w − r_l − m)`` (records' ``margin`` field wins).
        reward_prompt: a template file in ``configs/prompts/`` appended as a user turn after the
            response (factual augmentation); ``None`` reads the reward at the response's end.
        eval_fraction: share of pairs held out for accuracy at the end (0 = none).
    """

    out: str = "runs/reward"
    margin: float = 0.0
    reward_prompt: str | None = None
    eval_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")
