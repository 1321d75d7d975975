"""Typed configs of ``train/dpo.py`` (``configs/dpo/``) and ``train/reward.py`` (``configs/reward/``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

from mmalign.losses.dpo import LOSS_TYPES
from mmalign.preference.formats import FORMATS, PreferencePair, load_preferences
from mmalign.training.run_config import RunConfig


@dataclass
class PreferenceSource:
    """One preference file: ``format`` is ``auto`` or one of povid / llava_rlhf / hound / trl.

    Attributes:
        path: JSON or JSONL file of preference records.
        format: ``auto`` (detected from the records) or povid / llava_rlhf / hound / trl.
        media_root: folder the media paths are relative to (default: the file's folder).
        max_records: keep at most this many (in file order).
        repeat: how many times the source appears in the mixture (upsampling).
    """

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
    """POVID's second term. ``noise_weight = 0`` → plain DPO on (chosen, rejected) = stage 1.

    Attributes:
        inject_weight: weight of the DPO term on (chosen, hallucination-injected rejected).
        noise_weight: weight of the term on (chosen, the policy's answer under a noised image).
        noise_source: ``argmax`` (one forward, the authors' code) or ``generate`` (the paper).
        noise_t: diffusion noise step of the image distortion (0–1000).
        max_new_tokens: answer length cap for ``generate``.
    """

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


TrainRunConfig = RunConfig  # the old name of the shared run config


@dataclass
class DPOConfig(RunConfig):
    """DPO family / POVID training: the shared :class:`~mmalign.training.run_config.RunConfig`
    plus preference data and the method's fields.

    Attributes:
        data: preference sources (mixed).
        max_length: tokens per prompt + response (responses are cut at the end).
        beta: KL strength β.
        loss_type: ``sigmoid`` (DPO, cDPO with ``label_smoothing``), ``ipo`` or ``hinge``.
        label_smoothing: cDPO ε.
        average_log_prob: length-averaged log-probs (IPO's paper and TRL's IPO use them).
        sft_weight: γ of the SFT term γ·NLL(y_w) per token.
        reference: ``precomputed`` (one pass before training, cached on disk), ``frozen`` (a
            frozen copy held in the engine) or ``lora`` (the adapter disabled; needs ``lora``;
            with a training projector or encoder it drifts with them — warned, as POVID's code).
        ref_cache: cache folder for ``precomputed`` (default ``<out>/ref_cache``).
        pairs_per_row: pairs packed into one shared-prefix row.
        povid: POVID's two-term objective (needs an online reference when ``noise_weight > 0``).
    """

    model: str = "checkpoints/tiny-shapeworld"
    out: str = "runs/dpo"
    max_length: int = 1024
    data: list[PreferenceSource] = field(default_factory=list)
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
        if self.reference == "lora" and (self.parts.train_projector or self.parts.train_vision):
            # Decided: warn, not refuse. The adapter-disabled reference shares the encoder and
            # projector with the policy, so when they train the reference drifts with them (it
            # is no longer the start model). POVID's code does exactly this (LoRA + projector lr
            # 2e-5, reference = adapter disabled), and configs/dpo/llava15_7b_povid.yaml follows it.
            warnings.warn(
                "reference=lora with parts.train_projector/train_vision: the reference is the "
                "adapter-disabled policy, whose encoder/projector train too, so the reference drifts "
                "from the start model (as in POVID's code). For a fixed reference use reference: "
                "frozen or precomputed, or freeze the projector.",
                UserWarning,
                stacklevel=2,
            )
        if self.povid.noise_weight > 0 and self.reference == "precomputed":
            raise ValueError(
                "POVID's noise term scores the policy's own answers: use reference frozen or lora"
            )
        if self.pairs_per_row < 1 or self.sft_weight < 0:
            raise ValueError("pairs_per_row must be ≥ 1 and sft_weight ≥ 0")


@dataclass
class RewardConfig(RunConfig):
    """Bradley–Terry reward model.

    Attributes:
        data: preference sources (mixed).
        max_length: tokens per prompt + response (responses are cut at the end).
        margin: a constant margin in ``−log σ(r_w − r_l − m)`` (records' ``margin`` field wins).
        reward_prompt: a template file in ``configs/prompts/`` appended as a user turn after the
            response (factual augmentation); ``None`` reads the reward at the response's end.
        eval_fraction: share of pairs held out for accuracy at the end (0 = none).
    """

    model: str = "checkpoints/tiny-shapeworld"
    out: str = "runs/reward"
    max_length: int = 1024
    data: list[PreferenceSource] = field(default_factory=list)
    margin: float = 0.0
    reward_prompt: str | None = None
    eval_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError("eval_fraction must be in [0, 1)")
