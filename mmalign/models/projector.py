"""Projectors from vision features to the LLM's embedding space.

``linear`` is LLaVA-1's projector (https://arxiv.org/abs/2304.08485); ``mlp2x_gelu`` is
LLaVA-1.5's (https://arxiv.org/abs/2310.03744): Linear → GELU → Linear. ``mlpNx_gelu`` stacks N
linear layers with GELU between them.
"""

from __future__ import annotations

import re

from torch import nn

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(kind: str) -> int:
    """Number of linear layers of a projector kind; raises on an unknown kind."""
    if kind == "linear":
        return 1
    match = _MLP.match(kind)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"unknown projector {kind!r}: use 'linear' or 'mlpNx_gelu' (e.g. 'mlp2x_gelu')")
    return int(match.group(1))


def build_projector(kind: str, in_dim: int, out_dim: int, bias: bool = True) -> nn.Sequential:
    """Build a projector.

    Args:
        kind: ``"linear"`` or ``"mlpNx_gelu"``.
        in_dim: vision feature size D_v.
        out_dim: LLM hidden size D.
        bias: linear layers with bias (LLaVA: yes).

    Returns:
        A module mapping ``(..., D_v)`` to ``(..., D)``. Linear layers sit at even indices
        (0, 2, 4, ...), which the llava-hf import/export relies on.
    """
    depth = projector_depth(kind)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=bias)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim, bias=bias)]
    return nn.Sequential(*layers)
