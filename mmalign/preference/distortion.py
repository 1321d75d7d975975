"""POVID's image distortion: forward diffusion noise on a ``[0, 1]`` image.

``betas = sigmoid(linspace(−6, 6, T)) · (5e-3 − 1e-5) + 1e-5``, ``ᾱ_t = Π_{s≤t}(1 − β_s)``,
``x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε`` with ε ~ N(0, I); POVID uses t = 500 of T = 1000
(https://arxiv.org/abs/2402.11411 and the authors' code, which indexes ``alphas_cumprod[t]`` with
0-based t). Apply before pixel normalisation; the result is not clipped, as in the code.
"""

from __future__ import annotations

import torch


def sigmoid_betas(num_steps: int = 1000, beta_start: float = 1e-5, beta_end: float = 5e-3) -> torch.Tensor:
    """The sigmoid β schedule ``(T,)`` in float64."""
    x = torch.linspace(-6.0, 6.0, num_steps, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def diffusion_noise(
    image: torch.Tensor, t: int = 500, num_steps: int = 1000, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noised image ``x_t`` of the same shape and dtype as ``image`` (values in ``[0, 1]``).

    Args:
        image: ``(..., 3, H, W)`` in ``[0, 1]``.
        t: diffusion step, ``0 ≤ t < num_steps`` (0-based, as POVID's code).
        generator: for reproducible noise.
    """
    if not 0 <= t < num_steps:
        raise ValueError(f"t must be in [0, {num_steps}), got {t}")
    alpha_bar = torch.cumprod(1.0 - sigmoid_betas(num_steps), dim=0)[t]
    noise = torch.randn(image.shape, generator=generator, dtype=torch.float32, device=image.device)
    out = alpha_bar.sqrt().item() * image.float() + (1.0 - alpha_bar).sqrt().item() * noise
    return out.to(image.dtype)
