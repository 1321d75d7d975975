"""ShapeWorld videos: objects moving at constant velocity, exact per-frame ground truth, H.264 mp4.

Each object (a :class:`Track`) is still or moves along one axis (left/right/up/down) at a constant
speed in px/frame. Moving objects either stay fully inside the frame, **enter** (fully outside in
the first frame, fully inside in the last) or **leave** (fully inside first, fully outside last),
so "what appears / leaves" questions are exact. Tracks never overlap in any frame (rejection
sampling), so no object is occluded.

An object is *visible* in a frame when any part of its box is inside the frame; its cell is the
grid cell containing its centre, clamped to the board.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmalign.shapeworld.render import render_objects
from mmalign.shapeworld.world import SIZES, WorldConfig, sample_color, sample_shapes

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
_UNIT = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0), "still": (0.0, 0.0)}


@dataclass
class Track:
    """One moving object: centre ``(x, y)`` in frame 0 and constant velocity ``(vx, vy)`` px/frame."""

    shape: str
    color: str
    size: str
    side: int
    x: float
    y: float
    vx: float
    vy: float
    faint: bool = False

    @property
    def direction(self) -> str:
        """Dominant axis of motion: ``left``/``right``/``up``/``down``, or ``still`` under 0.5 px/frame."""
        if max(abs(self.vx), abs(self.vy)) < 0.5:
            return "still"
        if abs(self.vx) >= abs(self.vy):
            return "right" if self.vx > 0 else "left"
        return "down" if self.vy > 0 else "up"

    def box_at(self, t: int) -> tuple[float, float, float, float]:
        """Unclipped float box ``(x0, y0, x1, y1)`` in frame ``t``."""
        cx, cy, h = self.x + self.vx * t, self.y + self.vy * t, self.side / 2
        return (cx - h, cy - h, cx + h, cy + h)


@dataclass
class FrameObject:
    """Ground truth of one visible object in one frame; ``box`` is clipped to the frame (exclusive ends)."""

    track: int
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]
    row: int
    col: int


@dataclass
class VideoScene:
    """A video scene graph: tracks plus per-frame visible objects (``frames[t]``)."""

    id: str
    background: str
    tracks: list[Track]
    frames: list[list[FrameObject]] = field(default_factory=list)

    def visible(self, t: int) -> set[int]:
        """Indices of tracks visible in frame ``t`` (negative ``t`` counts from the end)."""
        return {fo.track for fo in self.frames[t]}

    def entering(self) -> list[int]:
        """Tracks absent from the first frame and visible in the last."""
        return sorted(self.visible(-1) - self.visible(0))

    def leaving(self) -> list[int]:
        """Tracks visible in the first frame and absent from the last."""
        return sorted(self.visible(0) - self.visible(-1))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict tagged ``"kind": "video"``."""
        return {
            "kind": "video",
            "id": self.id,
            "background": self.background,
            "tracks": [asdict(t) for t in self.tracks],
            "frames": [[{**asdict(fo), "box": list(fo.box)} for fo in frame] for frame in self.frames],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoScene:
        """Inverse of :meth:`to_dict`."""
        frames = [
            [FrameObject(**{**fo, "box": tuple(int(v) for v in fo["box"])}) for fo in frame]
            for frame in data["frames"]
        ]
        return cls(data["id"], data["background"], [Track(**t) for t in data["tracks"]], frames)


def _overlaps(a: Track, b: Track, frames: int, gap: float = 1.0) -> bool:
    for t in range(frames):
        ax0, ay0, ax1, ay1 = a.box_at(t)
        bx0, by0, bx1, by1 = b.box_at(t)
        if ax0 < bx1 + gap and bx0 < ax1 + gap and ay0 < by1 + gap and by0 < ay1 + gap:
            return True
    return False


def _trajectory(rng: random.Random, cfg: WorldConfig, side: int) -> tuple[float, float, float, float]:
    """Start centre and velocity ``(x, y, vx, vy)`` for one object (see module docstring)."""
    w, h, steps = float(cfg.image_size), side / 2, cfg.video_frames - 1
    mode_u, event_u = rng.random(), rng.random()
    direction = rng.choice(DIRECTIONS[:4])
    speed = rng.uniform(cfg.video_min_speed, cfg.video_max_speed)
    along_u, perp = rng.random(), rng.uniform(h, w - h)
    if mode_u < cfg.video_still_share:
        return (perp, rng.uniform(h, w - h), 0.0, 0.0)
    dist = speed * steps
    if event_u < cfg.video_enter_share and dist >= 2 * h:
        end = h + along_u * (min(w - h, dist - h) - h)
        start = end - dist
    elif cfg.video_enter_share <= event_u < cfg.video_enter_share + cfg.video_leave_share and dist >= 2 * h:
        lo = max(h, w + h - dist)
        start = lo + along_u * (w - h - lo)
    else:
        dist = min(dist, w - 2 * h)
        speed = dist / steps
        start = h + along_u * (w - h - dist - h)
    ux, uy = _UNIT[direction]
    if ux + uy < 0:
        start = w - start
    x, y = (start, perp) if ux else (perp, start)
    return (x, y, ux * speed, uy * speed)


def frame_truth(tracks: Sequence[Track], cfg: WorldConfig, t: int) -> list[FrameObject]:
    """Visible objects of frame ``t`` with clipped boxes and the cell of their centre."""
    out, size, cs = [], cfg.image_size, cfg.cell_size
    for i, tr in enumerate(tracks):
        x0, y0, x1, y1 = tr.box_at(t)
        box = (
            max(0, int(np.floor(x0))),
            max(0, int(np.floor(y0))),
            min(size, int(np.ceil(x1))),
            min(size, int(np.ceil(y1))),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        cx, cy = (x0 + x1) / 2 - cfg.margin, (y0 + y1) / 2 - cfg.margin
        row = min(cfg.grid - 1, max(0, int(cy // cs)))
        col = min(cfg.grid - 1, max(0, int(cx // cs)))
        out.append(FrameObject(i, tr.shape, tr.color, tr.size, box, row, col))
    return out


def sample_video(rng: random.Random, cfg: WorldConfig, video_id: str, max_tries: int = 50) -> VideoScene:
    """Sample one video scene graph (same shape/colour priors as images).

    Args:
        rng: A stdlib ``random.Random`` (seed it per video for order-independent sampling).
        cfg: World configuration (``video_*`` fields).
        video_id: Identifier stored in the video (also seeds its pixel noise).
        max_tries: Trajectory draws per object before it is dropped for lack of room.

    Returns:
        The video with tracks and ``cfg.video_frames`` frames of ground truth (≥ 1 track).
    """
    n = rng.randint(cfg.video_min_objects, cfg.video_max_objects)
    tracks: list[Track] = []
    for shape in sample_shapes(rng, cfg, n, cfg.video_max_objects):
        color = sample_color(rng, cfg, shape)
        size = rng.choice(SIZES)
        faint = rng.random() < cfg.faint_share
        side = cfg.object_side(size)
        for _ in range(max_tries):
            track = Track(shape, color, size, side, *_trajectory(rng, cfg, side), faint=faint)
            if not any(_overlaps(track, other, cfg.video_frames) for other in tracks):
                tracks.append(track)
                break
    return build_video(video_id, rng.choice(cfg.backgrounds), tracks, cfg)


def build_video(video_id: str, background: str, tracks: list[Track], cfg: WorldConfig) -> VideoScene:
    """A video from given tracks, with ``cfg.video_frames`` frames of ground truth computed."""
    frames = [frame_truth(tracks, cfg, t) for t in range(cfg.video_frames)]
    return VideoScene(video_id, background, tracks, frames)


def render_video(video: VideoScene, cfg: WorldConfig) -> list[Image.Image]:
    """Render every frame of ``video`` (RGB, ``cfg.image_size`` square); deterministic."""
    frames = []
    for t in range(len(video.frames)):
        objects = [(tr.shape, tr.color, tr.box_at(t), tr.faint) for tr in video.tracks]
        frames.append(render_objects(objects, video.background, cfg, f"{video.id}:{t}"))
    return frames


def write_mp4(frames: Sequence[Image.Image], path: str | os.PathLike[str], fps: int, crf: int = 18) -> None:
    """Encode RGB frames as H.264 (libx264, yuv420p) mp4 with PyAV; readable by ``decord``.

    Args:
        frames: Equal-sized RGB images with even width and height (yuv420p needs it).
        path: Output file (written directly; callers wanting atomicity write a temp path and rename).
        fps: Frame rate.
        crf: x264 constant rate factor (lower = better quality).

    Raises:
        ValueError: On no frames, mixed sizes or odd dimensions.
    """
    import av  # local import: only video writing needs PyAV

    if not frames:
        raise ValueError("no frames to write")
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise ValueError(f"libx264/yuv420p needs even frame sizes, got {width}x{height}")
    if any(f.size != (width, height) for f in frames):
        raise ValueError("all frames must have the same size")
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_mp4(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode every frame with ``decord``: uint8 array of shape ``(T, H, W, 3)``."""
    import decord  # local import: decoding is optional for generation

    reader = decord.VideoReader(os.fspath(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()
