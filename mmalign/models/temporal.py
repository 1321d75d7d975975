"""A learned temporal layer over a clip's visual tokens (attention across frames and cells).

Encoding frames independently (Video-LLaVA) leaves motion to the LLM: it must find the same object
in an early and in a late frame and compare the two cells, a two-hop lookup. The tiny ShapeWorld
model never learned it (motion 0.21, chance 0.20, over every recipe tried), while one-hop lookups
such as colour reached 1.00. A few transformer blocks over all ``T · N`` tokens of a clip, as the
video Q-former of Video-LLaMA or the temporal layers of TimeSformer add, can write "this object
moves left" into the object's own tokens; supervised per token (:mod:`mmalign.shapeworld.recipe.temporal`)
it turns motion into a one-hop lookup.

Each block is pre-norm attention + MLP with residuals; the output projections start at zero, so a
mixer added to a trained model leaves its outputs unchanged until it is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MixerBlock(nn.Module):
    """Pre-norm self-attention and MLP over a clip's tokens; identity at initialisation."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"mixer width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        for layer in (self.out, self.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.out(attn)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TemporalMixer(nn.Module):
    """``layers`` :class:`MixerBlock` s over ``(B, T · N, D)`` clip features (shape kept)."""

    def __init__(self, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a temporal mixer needs ≥ 1 layer, got {layers}")
        self.blocks = nn.ModuleList(MixerBlock(dim, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x
