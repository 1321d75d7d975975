"""POVID's second dispreferred answer y_noise: the policy's response under a distorted image.

Two ways, both offered (https://arxiv.org/abs/2402.11411):

* ``generate`` (the paper): the policy answers the prompt given the diffusion-noised image.
* ``argmax`` (the authors' code): the policy reads the *chosen* answer teacher-forced under the
  noised image, and its argmax token at each position forms y_noise (same length as y_w).

Either way y_noise is then scored like any rejected answer, under the **clean** image (DPO
compares two answers to the same prompt). Noise is added to the ``[0, 1]`` pixels recovered
from the normalised tensor (after resizing — POVID noises before its processor's resize).
"""

from __future__ import annotations

from typing import Literal

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.lmm import LMM
from mmalign.preference.batch import EncodedPair, collate_plain
from mmalign.preference.distortion import diffusion_noise
from mmalign.training.generation import GenerationConfig, generate
from mmalign.utils import stable_seed

NoiseSource = Literal["argmax", "generate"]


def distort_pixels(
    pixels: torch.Tensor, processor: MultimodalProcessor, t: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Normalised pixels ``(..., 3, H, W)`` → the same after diffusion noise at step ``t`` in [0, 1] space."""
    ip = processor.cfg.image_processor
    mean = torch.tensor(ip.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(ip.std, dtype=torch.float32).view(3, 1, 1)
    unit = pixels.float().cpu() * std + mean
    noisy = diffusion_noise(unit, t, generator=generator)
    return ((noisy - mean) / std).to(pixels.dtype)


@torch.no_grad()
def noise_answers(
    model: LMM,
    processor: MultimodalProcessor,
    pairs: list[EncodedPair],
    source: NoiseSource = "argmax",
    t: int = 500,
    generator: torch.Generator | None = None,
    max_new_tokens: int = 64,
    synced_gpus: bool = False,
) -> list[str]:
    """y_noise as text, one per pair (the chosen answer is ``pairs[i].responses[0]``)."""
    device = next(model.parameters()).device
    noisy = [
        EncodedPair(
            p.id,
            p.prompt_ids,
            p.responses[:1],
            p.scored[:1],
            None if p.images is None else distort_pixels(p.images, processor, t, generator),
            None if p.videos is None else distort_pixels(p.videos, processor, t, generator),
        )
        for p in pairs
    ]
    dtype = next(model.projector.parameters()).dtype
    tok = processor.tokenizer
    if source == "argmax":
        batch = collate_plain(noisy, processor.pad_token_id).to(device, dtype)
        logits = model(batch.input_ids, batch.attention_mask, batch.images, batch.videos)["logits"]
        pred = logits[batch.pred_rows, batch.pred_cols].argmax(-1).cpu()
        seq = batch.seq_index.cpu()
        texts = [tok.decode(pred[seq == i].tolist(), skip_special_tokens=True) for i in range(len(pairs))]
        return [t.strip() or "." for t in texts]
    if source != "generate":
        raise ValueError(f"unknown y_noise source {source!r}")
    feats = [{"id": p.id, "input_ids": p.prompt_ids, "images": p.images, "videos": p.videos} for p in noisy]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, synced_gpus=synced_gpus)
    texts = generate(model, processor, feats, cfg, batch_size=max(1, len(feats))).texts
    # an empty answer would make no rejected sequence: fall back to one token of text
    return [t or "." for t in texts]


def noise_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of y_noise's distortion at one micro-batch of one rank: the same in every process
    (Python's ``hash`` of a tuple is not, and a resumed run must redraw the same noise)."""
    return stable_seed(seed, step, micro, rank)
