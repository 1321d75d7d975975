"""The SFT step as a library function: one collated micro-batch → ``(loss, metrics)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def sft_step(
    model: Callable[..., dict[str, torch.Tensor]],
    batch: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    loss_reduction: str = "token",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss on the assistant tokens of a batch from ``MultimodalProcessor.collate``.

    Args:
        model: an :class:`~mmalign.models.lmm.LMM` or its engine.
        batch: ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, T)``, ``images`` / ``videos``
            (or None).
        device / dtype: where the batch goes, and the media's precision.
        loss_reduction: ``token`` (mean over all target tokens, LLaVA) or ``example`` (each
            answer's tokens averaged first).

    Returns:
        The loss (not yet backpropagated) and ``{"tokens": non-padding tokens}`` (the run loop
        reports it as ``tok/s``).
    """
    media = {k: None if batch[k] is None else batch[k].to(device, dtype) for k in ("images", "videos")}
    result = model(
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        **media,
        labels=batch["labels"].to(device),
        loss_reduction=loss_reduction,
    )
    return result["loss"], {"tokens": float(batch["attention_mask"].sum())}
