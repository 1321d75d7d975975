"""Image and video loading and pixel processing — one normalisation for every path.

Every image, in the training loader (:func:`load_image`), the chat server
(:mod:`mmalign.serve.protocol`) and the builders, goes through :func:`normalize_image` /
:func:`to_rgb`, so the model sees what a person sees in an image viewer:

* **Orientation**: the EXIF orientation tag (JPEG, PNG, WebP, TIFF) is applied
  (``ImageOps.exif_transpose``): a phone photo stored sideways comes out upright.
* **Tonal range** (every mode Pillow opens): 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``RGBX``,
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and their alpha forms) use Pillow's own conversion; a
  CMYK image with an embedded ICC profile is converted to sRGB through it. ``I;16*`` (16-bit
  PNG/TIFF/PGM) maps its declared range 0…65535 onto 0…255 (``v / 257``). ``I`` (32-bit int) and
  ``F`` (float) declare no range: integers already within 0…255 and floats within [0, 1] are
  kept on that scale (``v`` and ``v · 255``); any other data is stretched from its own minimum to
  its maximum (min → 0, max → 255; NaN → 0, ±inf clip). Grey modes become grey RGB.
* **Transparency** (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a palette or grey/RGB
  PNG with a ``transparency`` index or colour): kept as ``RGBA`` by :func:`normalize_image`,
  then composited by :func:`to_rgb` onto a background before alpha is dropped — never black.
  :func:`process_image` uses the padding colour (the normalisation mean) in ``pad`` mode, so
  transparent areas read as "nothing" exactly like the padding, and white in ``resize`` mode (what
  a viewer or browser shows).
* **Size** (:func:`check_image_size`): an image is refused when ``w · h`` exceeds the pixel
  limit or when the square ``pad`` mode would pad it to more than the padded limit
  (``max(w, h)²``; ``MAX_IMAGE_PIXELS`` = 2²⁷ for both in the training loader;
  ``ServeLimits.max_image_pixels`` = 4096² and ``max_padded_pixels`` = 8192² in the server,
  answered 413) — checked from the file header, before any pixel is decoded. A 20000×1 PNG of
  140 bytes would otherwise pad to 4·10⁸ pixels. Loaders do not know the mode, so they apply the
  padded bound in both modes. Within the bounds the work stays small: in ``pad`` mode an image
  whose longer side exceeds ``PAD_EXACT_SIDE`` (4096) is first shrunk by an integer box filter
  (``Image.reduce``) to about twice the output size, so a long, thin image never allocates its
  full padded square; images up to that side are padded and resized exactly as LLaVA does.

Pixels: LLaVA's ``pad`` mode (expand to a square filled with the mean colour, then resize —
https://arxiv.org/abs/2310.03744) or a plain ``resize``; then rescale to [0, 1] and normalise.
An ordinary RGB image gives the same tensor as before these rules.

Videos: decord reads the file and each frame's presentation time
(``VideoReader.get_frame_timestamp``). Frames are chosen by *time*, not by index, so a
variable-frame-rate clip is sampled evenly over its real duration: ``T`` frames at the centres of
``T`` equal time segments of ``[first frame start, last frame end]`` (frames repeat when the clip
has fewer than ``T``), or, when ``fps`` is given, at ``t0 + i / fps`` (the last frame repeats past
the end). Each target time takes the frame on screen at that moment.

A video may also be a **folder of extracted frames** (as LLaVA-Hound releases its videos): the
image files in it (:data:`FRAME_SUFFIXES`; hidden files such as ``.DS_Store`` are ignored, any
other file is an error) in natural name order (``frame_2`` before ``frame_10``), frame ``k`` shown
from ``k / frames_fps``. A folder carries no frame rate: uniform sampling needs none (the centres
of ``T`` equal segments of *all* frames, as for a file — Hound's mp4 loader reads only the first
10 s), and ``fps`` sampling takes the rate from ``frames_fps`` when the caller knows it; without
it, a folder falls back to uniform sampling (with a warning), since an assumed rate would silently
change which moments are seen. Only the sampled frames are decoded, each by :func:`load_image` —
the same normalisation as images. Departures from Hound's frame loader
(``languagebind/video/processing_video.py``): it sorts names as plain strings (the same order for
zero-padded names) and takes ``linspace(0, n - 1, T)`` (first and last frame included).
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

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


WHITE = (255, 255, 255)
MAX_IMAGE_PIXELS = 2**27  # the training loader's bound on the padded square (≈ 11585², 400 MB as RGB)
PAD_EXACT_SIDE = 4096  # pad mode: longer sides up to this are padded at full size, as LLaVA does
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def check_image_size(
    width: int,
    height: int,
    max_pixels: int,
    mode: Literal["pad", "resize"] | None = None,
    max_padded_pixels: int | None = None,
) -> None:
    """Refuse an image whose processing would cost more than the bounds allow.

    Args:
        width / height: the image's size (from the file header; nothing decoded yet).
        max_pixels: the bound on ``w · h``.
        mode: ``"resize"`` bounds ``w · h`` only; ``"pad"`` and ``None`` (mode unknown, as in the
            loaders) also bound the padded square ``max(w, h)²``.
        max_padded_pixels: the bound on ``max(w, h)²`` (default: ``max_pixels``).

    Raises:
        MediaError: with the size and the bound (callers add the file or request field).
    """
    if width < 1 or height < 1:
        raise MediaError(f"image of {width}×{height} has no pixels")
    if width * height > max_pixels:
        raise MediaError(f"image of {width}×{height} exceeds {max_pixels} pixels")
    side = max(width, height)
    padded_bound = max_pixels if max_padded_pixels is None else max_padded_pixels
    if mode != "resize" and side * side > padded_bound:
        raise MediaError(
            f"image of {width}×{height} exceeds {padded_bound} pixels once padded to a {side}×{side} "
            "square, as pad mode does; crop or shrink its longer side"
        )


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` or ``F`` → ``L`` by the rule in the module docstring."""
    arr = np.asarray(img).astype(np.float64)
    if img.mode in _SIXTEEN_BIT:
        out = arr / 257.0
    else:
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0
        elif (img.mode == "I" and lo >= 0 and hi <= 255) or hi == lo:
            out = arr
        else:
            out = (arr - lo) * (255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "L")


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK → sRGB through the embedded ICC profile when there is a usable one, else Pillow's formula."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return img.convert("RGB")


def normalize_image(img: Image.Image) -> Image.Image:
    """Any Pillow image → upright 8-bit ``RGB``, or ``RGBA`` when some pixel is transparent.

    Applies the EXIF orientation, maps every mode to 8 bits with its full tonal range and turns
    every form of transparency into an alpha channel (rules in the module docstring). An
    ordinary RGB image comes back with the same pixels.
    """
    transparency = img.info.get("transparency")
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a corrupt EXIF block does not make the pixels unreadable: keep them as stored
        pass
    if img.mode in _SIXTEEN_BIT or img.mode in ("I", "F"):
        grey = _scale_to_8bit(img)
        if isinstance(transparency, (int, float)) and not isinstance(transparency, bool):
            alpha = Image.fromarray(np.where(np.asarray(img) == transparency, 0, 255).astype(np.uint8), "L")
            grey = Image.merge("LA", (grey, alpha))
        img = grey
    elif img.mode == "La":  # premultiplied grey + alpha: Pillow converts it to nothing else
        lum, alpha = img.split()
        y, a = np.asarray(lum, dtype=np.float64), np.asarray(alpha, dtype=np.float64)
        straight = np.clip(np.rint(np.where(a > 0, y * 255.0 / np.maximum(a, 1), 0)), 0, 255)
        img = Image.merge("LA", (Image.fromarray(straight.astype(np.uint8)), alpha))
    rgba_palette = img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
    if img.mode in _ALPHA_MODES or "transparency" in img.info or rgba_palette:
        rgba = img.convert("RGBA")
        lo, _ = rgba.getchannel("A").getextrema()
        return rgba if lo < 255 else rgba.convert("RGB")
    if img.mode == "CMYK":
        return _cmyk_to_rgb(img)
    return img.convert("RGB")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow image → upright 8-bit ``RGB``, transparent pixels composited onto ``background``.

    This is the one conversion every reader of user images uses (see the module docstring for
    the rules per mode).
    """
    img = normalize_image(img)
    if img.mode == "RGBA":
        canvas = Image.new("RGBA", img.size, (*background, 255))
        img = Image.alpha_composite(canvas, img).convert("RGB")
    return img


def background_for(cfg: ImageProcessorConfig) -> tuple[int, int, int]:
    """The colour transparent pixels get: the padding (mean) colour in ``pad`` mode, else white."""
    if cfg.mode == "pad":
        return tuple(int(round(m * 255)) for m in cfg.mean)  # type: ignore[return-value]
    return WHITE


def load_image(
    path: str | Path,
    background: tuple[int, int, int] | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Open an image file as a person sees it (:func:`normalize_image`).

    Args:
        path: the file.
        background: composite transparent pixels onto this colour and return ``RGB``; ``None``
            (default) returns ``RGBA`` for an image with transparency, so :func:`process_image`
            can composite onto the colour its mode calls for.
        max_pixels: bound on the padded square (:func:`check_image_size`), checked from the
            header before decoding.

    Returns:
        An 8-bit ``RGB`` (or ``RGBA``) image, upright.

    Raises:
        MediaError: the file is missing, unreadable, or too large; the message names it.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            check_image_size(img.width, img.height, max_pixels)
            img.load()
            return normalize_image(img) if background is None else to_rgb(img, background)
    except MediaError as exc:
        raise MediaError(f"image {path}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise MediaError(f"image {path}: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
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


def process_image(
    img: Image.Image, cfg: ImageProcessorConfig, max_pixels: int = MAX_IMAGE_PIXELS
) -> torch.Tensor:
    """PIL image (any mode) → normalised ``(3, size, size)`` float tensor.

    The image goes through :func:`to_rgb` (transparent pixels onto :func:`background_for`), then
    ``pad``/``resize`` as LLaVA.

    In ``pad`` mode an image whose longer side exceeds ``PAD_EXACT_SIDE`` is first shrunk by an
    integer box filter to about ``2 · size`` (so the padded canvas stays small); below that side
    the result is exactly LLaVA's expand-to-square then resize.

    Raises:
        MediaError: the work (the padded square in ``pad`` mode, ``w · h`` in ``resize``)
            exceeds ``max_pixels``.
    """
    check_image_size(img.width, img.height, max_pixels, cfg.mode)
    img = to_rgb(img, background_for(cfg))
    if cfg.mode == "pad":
        side = max(img.size)
        if side > PAD_EXACT_SIDE:  # bound the padded canvas: box-shrink to ~2× the output first
            img = img.reduce(max(2, math.ceil(side / (2 * cfg.size))))
        img = expand_to_square(img, background_for(cfg))
    if img.size != (cfg.size, cfg.size):
        img = img.resize((cfg.size, cfg.size), _RESAMPLE[cfg.resample])
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (arr - mean) / std


def _frame_starts(
    n_frames: int, avg_fps: float | None, timestamps: np.ndarray | None
) -> tuple[np.ndarray, float]:
    """Each frame's start time (non-decreasing) and the clip's end time, in seconds."""
    if timestamps is not None:
        ts = np.asarray(timestamps, dtype=np.float64).reshape(-1, 2)
        if len(ts) == n_frames and np.isfinite(ts).all() and (n_frames == 1 or ts[-1, 0] > ts[0, 0]):
            starts = np.maximum.accumulate(ts[:, 0])
            step = float(np.median(np.diff(starts))) if n_frames > 1 else 0.0
            end = float(ts[-1, 1]) if ts[-1, 1] > starts[-1] else float(starts[-1]) + step
            if end > starts[0]:
                return starts, end
    rate = avg_fps if avg_fps and avg_fps > 0 else 1.0
    return np.arange(n_frames, dtype=np.float64) / rate, n_frames / rate


def sample_frame_indices(
    n_frames: int,
    num: int,
    avg_fps: float | None = None,
    fps: float | None = None,
    timestamps: np.ndarray | None = None,
) -> list[int]:
    """Choose ``num`` frame indices by presentation time.

    Args:
        n_frames: frames in the clip.
        num: frames wanted (T).
        avg_fps: the clip's frame rate; used only when ``timestamps`` are missing or unusable
            (then frame ``k`` starts at ``k / avg_fps``).
        fps: if given, sample at this many frames per second from the first frame (at most
            ``num`` frames) instead of uniformly over the whole clip; past the end the last frame
            repeats to reach ``num``.
        timestamps: ``(n_frames, 2)`` ``[start, end]`` seconds of each frame (decord's
            ``get_frame_timestamp``); the clip spans the first start to the last end.

    Returns:
        ``num`` indices in ``[0, n_frames)``, non-decreasing: uniform mode takes the frame on
        screen at the centre of each of ``num`` equal time segments (a clip shorter than ``num``
        repeats frames); a target within 1 ms of a frame's start takes that frame (decord rounds
        times to milliseconds).

    Raises:
        ValueError: no frames, ``num < 1``, or ``fps <= 0``.
    """
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    if num < 1:
        raise ValueError(f"num frames must be ≥ 1, got {num}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if fps is not None and timestamps is None and not (avg_fps and avg_fps > 0):
        raise ValueError("fps sampling needs the frame timestamps or the clip's average fps")
    starts, end = _frame_starts(n_frames, avg_fps, timestamps)
    t0 = float(starts[0])
    if fps is None:
        targets = t0 + (np.arange(num) + 0.5) * ((end - t0) / num)
    else:
        targets = t0 + np.arange(num) / fps
    idx = np.searchsorted(starts, targets + 1e-3, side="right") - 1
    return [int(i) for i in np.clip(idx, 0, n_frames - 1)]


FRAME_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def natural_key(name: str) -> tuple:
    """Sort key ordering digit runs by value: ``frame_2`` < ``frame_10`` (ties: the plain name)."""
    parts = re.split(r"(\d+)", name.casefold())
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name)


def frame_files(folder: str | Path) -> list[Path]:
    """The frames of a frame folder, in natural name order.

    Image files (:data:`FRAME_SUFFIXES`, any case) are frames; hidden files (``.DS_Store``) and
    subfolders are ignored.

    Raises:
        MediaError: the folder is missing, holds a file that is not an image, or holds no frame;
            the message names the folder (and the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(f"video frame folder not found: {folder}")
    frames, others = [], []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.is_dir():
            continue
        (frames if entry.suffix.lower() in FRAME_SUFFIXES else others).append(entry)
    if others:
        names = ", ".join(sorted(p.name for p in others)[:3])
        raise MediaError(
            f"video frame folder {folder} holds {len(others)} file(s) that are not images ({names}); "
            f"a frame folder holds only frames ({', '.join(sorted(FRAME_SUFFIXES))})"
        )
    if not frames:
        raise MediaError(
            f"video frame folder {folder} holds no frame (image files {', '.join(sorted(FRAME_SUFFIXES))})"
        )
    return sorted(frames, key=lambda p: natural_key(p.name))


def _load_frame_folder(
    folder: Path, num: int, fps: float | None, frames_fps: float | None
) -> list[Image.Image]:
    files = frame_files(folder)
    if fps is not None and frames_fps is None:
        warnings.warn(
            f"video frame folder {folder} has no frame rate (frames_fps): sampling {num} frames "
            "uniformly instead of at the requested fps",
            stacklevel=3,
        )
        fps = None
    idx = sample_frame_indices(len(files), num, avg_fps=frames_fps or 1.0, fps=fps)
    loaded: dict[int, Image.Image] = {}
    for i in idx:
        if i not in loaded:
            loaded[i] = load_image(files[i])
    return [loaded[i] for i in idx]


def load_video_frames(
    path: str | Path, num: int, fps: float | None = None, frames_fps: float | None = None
) -> list[Image.Image]:
    """Decode ``num`` frames of a video file (decord, chosen by timestamps) or a frame folder.

    Args:
        path: the video file (anything decord/FFmpeg reads, e.g. H.264 mp4) or a folder of
            frame images (natural name order; see the module docstring).
        num: frames wanted (T).
        fps: sample at this rate from the start instead of uniformly (see
            :func:`sample_frame_indices`). A frame folder needs ``frames_fps`` for this; without
            it the folder is sampled uniformly (and a warning says so).
        frames_fps: the rate a frame folder was extracted at (frame ``k`` shown from
            ``k / frames_fps``); ignored for video files, which carry their own timestamps.

    Returns:
        ``num`` frames: ``RGB`` from a video file; from a folder, each frame as :func:`load_image`
        gives it (``RGBA`` when it has transparency, composited by :func:`process_image`).

    Raises:
        MediaError: the file or folder is missing, not a decodable video, holds a non-image file,
            or has no frames; the message names it.
    """
    path = Path(path)
    if path.is_dir():
        return _load_frame_folder(path, num, fps, frames_fps)
    if not path.exists():
        raise MediaError(f"video file not found: {path}")
    try:
        import decord

        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(reader)
        if n == 0:
            raise MediaError(f"video {path} has no frames")
        try:
            timestamps = np.asarray(reader.get_frame_timestamp(list(range(n))), dtype=np.float64)
        except Exception:  # no usable timestamps: fall back to the average rate
            timestamps = None
        idx = sample_frame_indices(n, num, avg_fps=reader.get_avg_fps(), fps=fps, timestamps=timestamps)
        batch = reader.get_batch(idx).asnumpy()  # (T, H, W, 3) uint8
    except MediaError:
        raise
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError
        raise MediaError(f"cannot decode video {path}: {exc}") from exc
    return [Image.fromarray(frame) for frame in batch]


def process_video(frames: list[Image.Image], cfg: ImageProcessorConfig) -> torch.Tensor:
    """Frames → ``(T, 3, size, size)``."""
    return torch.stack([process_image(f, cfg) for f in frames])
