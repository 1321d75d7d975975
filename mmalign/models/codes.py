"""Fixed (parameter-free) sinusoidal codes added to visual tokens: frame index, patch row/column.

A contrastively pretrained CLIP keeps where a patch is in its features; a small encoder trained for
a few minutes keeps it too, but weakly: in the tiny ShapeWorld tower the cell explained 5 % of the
feature variance (1.5 % after the trained projector) against 52 % for the shape. A code added at
the token's own RMS makes "where" (and, for videos, "when") as strong a direction as "what".
Measured on the tiny recipe, it was not what limited position answers: 0.36 after stage 1 with
the code, 0.40 without (80 test images); most errors were in the answer's second word. Both codes
are off by default (``LMMConfig.image_spatial`` / ``video_temporal``).
"""

from __future__ import annotations

import math

import torch

CODES = ("none", "sinusoid")


def check_code(name: str, value: str) -> None:
    """Raise a ``ValueError`` naming the option unless ``value`` is a known code."""
    if value not in CODES:
        raise ValueError(f"{name} must be one of {CODES}, got {value!r}")


def sinusoid_codes(n: int, dim: int) -> torch.Tensor:
    """``(n, dim)`` sin/cos codes of the indices ``0 … n-1`` (Transformer-style frequencies)."""
    t = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    codes = torch.zeros(n, dim)
    codes[:, 0::2] = torch.sin(t * freq)
    codes[:, 1::2] = torch.cos(t * freq)[:, : dim // 2]
    return codes


def grid_codes(grid: int, dim: int) -> torch.Tensor:
    """``(grid * grid, dim)`` codes of row-major patches: the row's code in the first half of the
    dimensions, the column's in the second (as 2-D sin-cos position embeddings)."""
    half = dim // 2
    rows = sinusoid_codes(grid, half).repeat_interleave(grid, dim=0)
    cols = sinusoid_codes(grid, dim - half).repeat(grid, 1)
    return torch.cat([rows, cols], dim=-1)


def add_code(feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``feats + codes``, each code scaled so that its RMS equals its token's RMS.

    Args:
        feats: ``(..., D)`` tokens.
        codes: broadcastable to ``feats`` (``(..., D)``).
    """
    codes = codes.to(feats.device, feats.dtype)
    code_rms = codes.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)
    token_rms = feats.pow(2).mean(-1, keepdim=True).sqrt()
    return feats + codes / code_rms * token_rms
