"""Video encoding: per-frame image features, optional spatial pooling, frames concatenated.

A clip of ``T`` frames becomes ``T · N'`` visual tokens, where ``N'`` is the per-frame token count
after pooling the patch grid with stride ``pool`` (Video-LLaVA / LLaVA-Hound encode frames
independently; spatial pooling is how PLLaVA and LLaVA-NeXT-Video keep long clips affordable).
Frame *sampling* (decord) lives in :mod:`mmalign.data.media`.

Frame order reaches the LLM only through its own token positions unless ``temporal="sinusoid"``:
then frame ``t``'s tokens carry a fixed sinusoidal code of ``t`` (:mod:`mmalign.models.codes`:
added to the encoder features before the projector, at each token's RMS; no parameters), as
video transformers add a temporal position embedding. Motion direction needs it: the same object
in an early and in a late cell. (The tiny ShapeWorld model, trained with it, still answered motion
at chance, 0.21: comparing two frames is a two-hop lookup for its LLM. An optional ``mixer``,
:class:`mmalign.models.temporal.TemporalMixer`, runs over each clip's tokens after the codes.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmalign.models.codes import add_code, check_code, sinusoid_codes


class VideoEncoder(nn.Module):
    """Encode ``(B, T, 3, H, W)`` clips with an image encoder, frame by frame.

    Args:
        image_encoder: any encoder of :mod:`mmalign.models.vision` (``num_tokens``, ``grid``,
            ``num_prefix_tokens``, ``hidden_size``).
        num_frames: T, frames per clip.
        pool: spatial pooling stride over the patch grid (1 = none). Prefix (CLS) tokens are
            dropped when pooling.
        temporal: ``"none"`` or ``"sinusoid"`` (add :func:`sinusoid_codes` of the frame index to
            every token of the frame; see the module docstring).
        mixer: optional module ``(B, T · N', D) → (B, T · N', D)`` run over each clip's tokens
            after the codes (:class:`mmalign.models.temporal.TemporalMixer`); the LMM saves and
            loads it (``LMM.temporal``).
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        num_frames: int,
        pool: int = 1,
        temporal: str = "none",
        mixer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if num_frames < 1:
            raise ValueError(f"num_frames must be ≥ 1, got {num_frames}")
        if pool < 1:
            raise ValueError(f"pool must be ≥ 1, got {pool}")
        check_code("temporal", temporal)
        self.image_encoder = image_encoder
        self.num_frames = num_frames
        self.pool = pool
        self.temporal = temporal
        self.mixer = mixer

    @property
    def tokens_per_frame(self) -> int:
        if self.pool == 1:
            return int(self.image_encoder.num_tokens)
        side = math.ceil(self.image_encoder.grid / self.pool)
        return side * side

    @property
    def num_tokens(self) -> int:
        return self.num_frames * self.tokens_per_frame

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encode clips.

        Args:
            frames: ``(B, T, 3, H, W)`` normalised pixels, ``T == num_frames``.

        Returns:
            ``(B, T · N', D_v)`` features, frame-major.
        """
        b, t = frames.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames per clip, got {t}")
        return self.pool_features(self.image_encoder(frames.flatten(0, 1)), b)

    def pool_features(self, feats: torch.Tensor, n_clips: int) -> torch.Tensor:
        """Per-frame encoder features ``(B·T, N, D)`` → clip features ``(B, T · N', D)``.

        Split from :meth:`forward` so that a caller can run the image encoder once over images and
        video frames together (one call per step on every rank, as ZeRO-3 needs).
        """
        if self.pool > 1:
            enc = self.image_encoder
            n_prefix = enc.num_prefix_tokens if enc.cfg.select == "cls_patch" else 0
            patches = feats[:, n_prefix:]
            g = enc.grid
            grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, g, g)
            grid = F.avg_pool2d(grid, kernel_size=self.pool, stride=self.pool, ceil_mode=True)
            feats = grid.flatten(2).transpose(1, 2)
        if self.temporal == "sinusoid":
            clips = feats.view(n_clips, self.num_frames, *feats.shape[1:])
            feats = add_code(clips, sinusoid_codes(self.num_frames, feats.shape[-1])[:, None]).flatten(0, 1)
        feats = feats.reshape(n_clips, -1, feats.shape[-1])
        return feats if self.mixer is None else self.mixer(feats)
