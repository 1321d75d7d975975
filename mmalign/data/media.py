"""Image and video loading and pixel processing.

Images: LLaVA's ``pad`` mode (expand to a square filled with the mean colour, then resize —
https://arxiv.org/abs/2310.03744) or a plain ``resize``; then rescale to [0, 1] and normalise.
Videos: decord reads the mp4; ``T`` frames are sampled uniformly over the whole clip (repeating
frames when the clip is shorter than ``T``), or at a fixed rate in seconds when ``fps`` is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MediaError(ValueError):
    """A media file is missing, unreadable or unsupported; the message names the file."""


@dataclass
class ImageProcessorConfig:
    """Pixel processing.

    Attributes:
        size: output side length (square), e.g. 336 for LLaVA-1.5.
        mode: ``"pad"`` (LLaVA: pad to square with the mean colour) or ``"resize"``.
        mean / std: per-channel normalisation of [0, 1] pixels.
        resample: PIL resampling filter name.
    """

    size: int = 336
    mode: Literal["pad", "resize"] = "pad"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be ≥ 1, got {self.size}")
        if self.mode not in ("pad", "resize"):
            raise ValueError(f"image mode must be 'pad' or 'resize', got {self.mode!r}")
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 channels, std > 0")

    @classmethod
    def from_hf(cls, directory: str | Path, mode: Literal["pad", "resize"] = "pad") -> ImageProcessorConfig:
        """Read a transformers ``preprocessor_config.json`` (CLIP/SigLIP) from a local folder."""
        path = Path(directory) / "preprocessor_config.json"
        if not path.exists():
            raise FileNotFoundError(f"no preprocessor_config.json in {directory}")
        spec = json.loads(path.read_text())
        size = spec.get("crop_size") or spec.get("size") or {}
        if isinstance(size, dict):
            side = size.get("height") or size.get("shortest_edge") or size.get("width")
        else:
            side = size
        if not side:
            raise ValueError(f"{path}: cannot find the image size (crop_size/size)")
        return cls(
            size=int(side),
            mode=mode,
            mean=tuple(spec.get("image_mean", CLIP_MEAN)),
            std=tuple(spec.get("image_std", CLIP_STD)),
        )


_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing or corrupt file raises :class:`MediaError` naming it."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError(f"cannot read image {path}: {exc}") from exc


def expand_to_square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side symmetrically with ``fill`` (LLaVA's ``expand2square``)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def process_image(img: Image.Image, cfg: ImageProcessorConfig) -> torch.Tensor:
    """PIL image → normalised ``(3, size, size)`` float tensor."""
    img = img.convert("RGB")
    if cfg.mode == "pad":
        img = expand_to_square(img, tuple(int(round(m * 255)) for m in cfg.mean))
    if img.size != (cfg.size, cfg.size):
        img = img.resize((cfg.size, cfg.size), _RESAMPLE[cfg.resample])
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (arr - mean) / std


def sample_frame_indices(
    n_frames: int,
    num: int,
    avg_fps: float | None = None,
    fps: float | None = None,
) -> list[int]:
    """Choose ``num`` frame indices.

    Args:
        n_frames: frames in the clip.
        num: frames wanted (T).
        avg_fps: the clip's frame rate (needed with ``fps``).
        fps: if given, sample at this many frames per second from the start (at most ``num``
            frames) instead of uniformly over the whole clip; short clips then repeat their last
            frame to reach ``num``.

    Returns:
        ``num`` indices in ``[0, n_frames)``, non-decreasing; a clip shorter than ``num``
        repeats frames.
    """
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    if num < 1:
        raise ValueError(f"num frames must be ≥ 1, got {num}")
    if fps is not None:
        if not avg_fps or avg_fps <= 0:
            raise ValueError("fps sampling needs the clip's average fps")
        step = avg_fps / fps
        idx = [min(int(round(i * step)), n_frames - 1) for i in range(num)]
        return idx
    # Centre of each of `num` equal segments: uniform coverage, first and last segment included.
    edges = np.linspace(0, n_frames, num + 1)
    return [min(int((edges[i] + edges[i + 1]) / 2), n_frames - 1) for i in range(num)]


def load_video_frames(path: str | Path, num: int, fps: float | None = None) -> list[Image.Image]:
    """Decode ``num`` frames of a video file with decord.

    Raises:
        MediaError: the file is missing, not a decodable video, or has no frames.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"video file not found: {path}")
    try:
        import decord

        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        if n == 0:
            raise MediaError(f"video {path} has no frames")
        idx = sample_frame_indices(n, num, avg_fps=reader.get_avg_fps(), fps=fps)
        batch = reader.get_batch(idx).asnumpy()  # (T, H, W, 3) uint8
    except MediaError:
        raise
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        raise MediaError(f"cannot decode video {path}: {exc}") from exc
    return [Image.fromarray(frame) for frame in batch]


def process_video(frames: list[Image.Image], cfg: ImageProcessorConfig) -> torch.Tensor:
    """Frames → ``(T, 3, size, size)``."""
    return torch.stack([process_image(f, cfg) for f in frames])
